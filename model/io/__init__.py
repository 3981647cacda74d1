"""Files in and out: DICOM series and DICOM-SEG, DICOMweb, interop outputs, previews, file walks (torch-free)."""
