"""What a client sends: NIfTI and DICOM uploads checked in a sandboxed child process, and DICOMweb study references."""
