"""The shipped target tables: latentseg's targets (names, synonyms, codes), the dataset label
maps (the paper's mapping table) and typical adult volumes.

Plain literals only, no imports: :mod:`model.targets.vocabulary` holds the schema that checks
these rows (:class:`~model.targets.vocabulary.Target`, :class:`~model.targets.vocabulary.DatasetLabelMap`,
:class:`~model.targets.vocabulary.SizePrior`) and builds :func:`~model.targets.vocabulary.default_vocabulary`
from them. Each row lists its fields in the schema's order. Ids are stable: append new targets
with new ids, never renumber. Any change to the targets or datasets changes the vocabulary's
sha256, which every bundle records (``vocabulary_sha256``).
"""

from __future__ import annotations

CodeRow = tuple[str, str, str]

# DICOM codes: (code value, coding scheme designator, code meaning), SNOMED CT.
ANATOMICAL_STRUCTURE: CodeRow = ("123037004", "SCT", "Anatomical Structure")  # category of organs
MORPHOLOGICALLY_ALTERED_STRUCTURE: CodeRow = ("49755003", "SCT", "Morphologically Altered Structure")  # of lesions
NEOPLASM: CodeRow = ("108369006", "SCT", "Neoplasm")
CYST: CodeRow = ("367643001", "SCT", "Cyst")

_ORG = ANATOMICAL_STRUCTURE
_ALT = MORPHOLOGICALLY_ALTERED_STRUCTURE
_KIDNEY = ("64033007", "SCT", "Kidney")
_ADRENAL = ("23451007", "SCT", "Adrenal gland")
_LUNG = ("39607008", "SCT", "Lung")
_KIDNEYS = ("kidney_left", "kidney_right")
_LUNGS = ("lung_left", "lung_right")

_O, _T, _C = "organ", "tumour", "cyst"  # TargetKind values

# Target fields, in order: id, name, display, kind, synonyms, code (None: no SNOMED CT concept),
# category, side (the patient's: "left", "right"; None), within (the organs a lesion lies in).
TARGETS: tuple[tuple[object, ...], ...] = (
    (1, "spleen", "Spleen", _O, ("lien",), ("78961009", "SCT", "Spleen"), _ORG),
    (2, "kidney_right", "Right kidney", _O,
     ("right kidney", "kidney right", "kidney r", "r kidney", "rt kidney"), _KIDNEY, _ORG, "right"),
    (3, "kidney_left", "Left kidney", _O,
     ("left kidney", "kidney left", "kidney l", "l kidney", "lt kidney"), _KIDNEY, _ORG, "left"),
    (4, "gallbladder", "Gallbladder", _O, ("gall bladder", "cholecyst"),
     ("28231008", "SCT", "Gallbladder"), _ORG),
    (5, "esophagus", "Esophagus", _O, ("oesophagus", "gullet"), ("32849002", "SCT", "Esophagus"), _ORG),
    (6, "liver", "Liver", _O, ("hepar",), ("10200004", "SCT", "Liver"), _ORG),
    (7, "stomach", "Stomach", _O, ("gaster",), ("69695003", "SCT", "Stomach"), _ORG),
    (8, "aorta", "Aorta", _O, (), ("15825003", "SCT", "Aorta"), _ORG),
    (9, "inferior_vena_cava", "Inferior vena cava", _O, ("postcava", "ivc", "vena cava inferior"),
     ("64131007", "SCT", "Inferior vena cava"), _ORG),
    (10, "portal_vein_and_splenic_vein", "Portal vein and splenic vein", _O,
     ("portal vein", "splenic vein", "portal and splenic veins", "portal splenic vein"),
     ("110765007", "SCT", "Portal vein and splenic vein"), _ORG),
    (11, "pancreas", "Pancreas", _O, (), ("15776009", "SCT", "Pancreas"), _ORG),
    (12, "adrenal_gland_right", "Right adrenal gland", _O,
     ("right adrenal gland", "right adrenal", "adrenal right", "right suprarenal gland"),
     _ADRENAL, _ORG, "right"),
    (13, "adrenal_gland_left", "Left adrenal gland", _O,
     ("left adrenal gland", "left adrenal", "adrenal left", "left suprarenal gland"),
     _ADRENAL, _ORG, "left"),
    (14, "duodenum", "Duodenum", _O, (), ("38848004", "SCT", "Duodenum"), _ORG),
    (15, "hepatic_vessel", "Hepatic vessels", _O,
     ("hepatic vessels", "liver vessel", "liver vessels", "hepatic vasculature"), None, _ORG),
    (16, "lung_right", "Right lung", _O, ("right lung", "lung right", "r lung"), _LUNG, _ORG, "right"),
    (17, "lung_left", "Left lung", _O, ("left lung", "lung left", "l lung"), _LUNG, _ORG, "left"),
    (18, "colon", "Colon", _O, ("large bowel", "large intestine"), ("71854001", "SCT", "Colon"), _ORG),
    (19, "intestine", "Small intestine", _O, ("small bowel", "small intestine"),
     ("30315005", "SCT", "Small intestine"), _ORG),
    (20, "rectum", "Rectum", _O, (), ("34402009", "SCT", "Rectum"), _ORG),
    (21, "urinary_bladder", "Urinary bladder", _O, ("bladder",),
     ("89837001", "SCT", "Urinary bladder"), _ORG),
    (22, "prostate", "Prostate", _O, ("prostate gland",), ("41216001", "SCT", "Prostate"), _ORG),
    (23, "femur_head_left", "Left femoral head", _O,
     ("left femoral head", "femoral head left", "left femur head", "head of femur left", "head of femur l",
      "head of left femur"), None, _ORG, "left"),
    (24, "femur_head_right", "Right femoral head", _O,
     ("right femoral head", "femoral head right", "right femur head", "head of femur right",
      "head of femur r", "head of right femur"), None, _ORG, "right"),
    (25, "celiac_trunk", "Celiac trunk", _O,
     ("coeliac trunk", "celiac artery", "coeliac artery", "celiac axis", "coeliac axis"),
     ("57850000", "SCT", "Celiac artery"), _ORG),
    (26, "kidney_tumor", "Kidney tumour", _T,
     ("kidney tumour", "renal tumor", "renal tumour", "kidney neoplasm", "renal neoplasm"),
     NEOPLASM, _ALT, None, _KIDNEYS),
    (27, "liver_tumor", "Liver tumour", _T,
     ("liver tumour", "hepatic tumor", "hepatic tumour", "liver neoplasm", "hepatic neoplasm"),
     NEOPLASM, _ALT, None, ("liver",)),
    (28, "pancreas_tumor", "Pancreas tumour", _T,
     ("pancreas tumour", "pancreatic tumor", "pancreatic tumour", "pancreatic neoplasm"),
     NEOPLASM, _ALT, None, ("pancreas",)),
    (29, "hepatic_vessel_tumor", "Hepatic vessel tumour", _T,
     ("hepatic vessel tumour", "liver vessel tumor", "liver vessel tumour"),
     NEOPLASM, _ALT, None, ("liver",)),
    (30, "lung_tumor", "Lung tumour", _T,
     ("lung tumour", "pulmonary tumor", "pulmonary tumour", "lung neoplasm", "pulmonary neoplasm"),
     NEOPLASM, _ALT, None, _LUNGS),
    (31, "colon_tumor", "Colon tumour", _T,
     ("colon tumour", "colonic tumor", "colonic tumour", "colon neoplasm", "colonic neoplasm"),
     NEOPLASM, _ALT, None, ("colon",)),
    (32, "kidney_cyst", "Kidney cyst", _C, ("renal cyst", "kidney cysts", "renal cysts"),
     CYST, _ALT, None, _KIDNEYS),
)

# Structures that are one connected piece in every patient (Target.connected).
ONE_PIECE: frozenset[str] = frozenset({
    "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior_vena_cava", "pancreas", "adrenal_gland_right", "adrenal_gland_left", "duodenum", "lung_right",
    "lung_left", "rectum", "urinary_bladder", "prostate", "femur_head_left", "femur_head_right",
})
# DatasetLabelMap fields, in order: name, labels ((value, target), ...), lateral_splits ((value,
# left target, right target), ...: one label split by the patient's side of the midline), aliases.
DATASETS: tuple[tuple[object, ...], ...] = (
    (
        "msd_task03_liver", ((1, "liver"), (2, "liver_tumor")),
        (), ("Task03_Liver", "MSD Liver", "msd_liver", "LiTS"),
    ),
    ("msd_task06_lung", ((1, "lung_tumor"),), (), ("Task06_Lung", "MSD Lung", "msd_lung")),
    (
        "msd_task07_pancreas", ((1, "pancreas"), (2, "pancreas_tumor")),
        (), ("Task07_Pancreas", "MSD Pancreas", "msd_pancreas"),
    ),
    (
        "msd_task08_hepatic_vessel", ((1, "hepatic_vessel"), (2, "hepatic_vessel_tumor")),
        (), ("Task08_HepaticVessel", "MSD HepaticVessel", "MSD Hepatic Vessel", "msd_task08_hepaticvessel"),
    ),
    ("msd_task09_spleen", ((1, "spleen"),), (), ("Task09_Spleen", "MSD Spleen", "msd_spleen")),
    ("msd_task10_colon", ((1, "colon_tumor"),), (), ("Task10_Colon", "MSD Colon", "msd_colon")),
    (
        "btcv",
        (
            (1, "spleen"), (2, "kidney_right"), (3, "kidney_left"), (4, "gallbladder"), (5, "esophagus"),
            (6, "liver"), (7, "stomach"), (8, "aorta"), (9, "inferior_vena_cava"),
            (10, "portal_vein_and_splenic_vein"), (11, "pancreas"), (12, "adrenal_gland_right"),
            (13, "adrenal_gland_left"),
        ),
        (), ("BTCV Abdomen", "BCV", "Synapse", "Beyond the Cranial Vault"),
    ),
    (
        "kits23", ((2, "kidney_tumor"), (3, "kidney_cyst")),
        ((1, "kidney_left", "kidney_right"),),
        ("KiTS", "KiTS 2023", "KiTS21"),
    ),
    (
        "amos22",
        (
            (1, "spleen"), (2, "kidney_right"), (3, "kidney_left"), (4, "gallbladder"), (5, "esophagus"),
            (6, "liver"), (7, "stomach"), (8, "aorta"), (9, "inferior_vena_cava"), (10, "pancreas"),
            (11, "adrenal_gland_right"), (12, "adrenal_gland_left"), (13, "duodenum"), (14, "urinary_bladder"),
            (15, "prostate"),
        ),
        (), ("AMOS", "AMOS 2022"),
    ),
    (
        "word",
        (
            (1, "liver"), (2, "spleen"), (3, "kidney_left"), (4, "kidney_right"), (5, "stomach"),
            (6, "gallbladder"), (7, "esophagus"), (8, "pancreas"), (9, "duodenum"), (10, "colon"),
            (11, "intestine"), (13, "rectum"), (14, "urinary_bladder"), (15, "femur_head_left"),
            (16, "femur_head_right"),
        ),
        ((12, "adrenal_gland_left", "adrenal_gland_right"),),
        ("WORD dataset", "Whole abdominal organ dataset"),
    ),
    (
        "abdomenct1k", ((1, "liver"), (3, "spleen"), (4, "pancreas")),
        ((2, "kidney_left", "kidney_right"),),
        ("AbdomenCT-1K", "AbdomenCT 1K"),
    ),
    (
        "totalsegmentator_v2",
        (
            (1, "spleen"), (2, "kidney_right"), (3, "kidney_left"), (4, "gallbladder"), (5, "liver"),
            (6, "stomach"), (7, "pancreas"), (8, "adrenal_gland_right"), (9, "adrenal_gland_left"),
            (10, "lung_left"), (11, "lung_left"),  # upper / lower lobe left
            (12, "lung_right"), (13, "lung_right"), (14, "lung_right"),  # upper / middle / lower lobe right
            (15, "esophagus"), (18, "intestine"), (19, "duodenum"), (20, "colon"), (21, "urinary_bladder"),
            (22, "prostate"), (23, "kidney_cyst"), (24, "kidney_cyst"),  # kidney_cyst_left / _right
            (52, "aorta"), (63, "inferior_vena_cava"), (64, "portal_vein_and_splenic_vein"),
        ),
        (), ("TotalSegmentator", "TotalSegmentator v2", "totalseg", "totalsegmentator_total"),
    ),
    (
        "latentseg_phantoms",
        (
            (1, "liver"), (2, "spleen"), (3, "kidney_right"), (4, "kidney_left"), (5, "pancreas"), (6, "stomach"),
            (7, "gallbladder"), (8, "aorta"), (9, "inferior_vena_cava"), (10, "liver_tumor"),
            (11, "pancreas_tumor"), (12, "kidney_tumor"),
        ),
        (), ("phantoms", "phantom"),
    ),
)


# The side of the body that an unpaired organ lies on in a normal adult (paired targets carry their ``side``).
# Like the size priors, not part of a Target. Used to spot files whose header mirrors the patient: training
# warns about such a case (training.data.laterality_problems), the review flag names such a mask.
USUAL_SIDES: dict[str, str] = {"liver": "right", "gallbladder": "right", "spleen": "left", "stomach": "left"}

# Typical adult volumes (rough literature ranges), for the review flag's "implausibly small"
# check (model.inference.statistics). Not part of a Target: the vocabulary's hash, which every bundle
# records, does not cover them. A mask below ``low_ml`` that does not touch the volume's edge is
# flagged; organs whose size depends on filling or on how much of them the field of view holds
# get a low bound well under the usual size.
# name: (low_ml, high_ml, source)
SIZE_PRIORS: dict[str, tuple[float, float, str]] = {
    "liver": (1000, 2500, "CT volumetry of adult livers, about 1.0-2.5 l (Heinemann 1999; Urata 1995)"),
    "spleen": (80, 500, "CT splenic volume, adults about 100-400 ml; > 500 ml splenomegaly (Prassopoulos 1997)"),
    "kidney_right": (80, 300, "CT kidney volume, adults about 80-300 ml each (Bakker 1999; Cheong 2007)"),
    "kidney_left": (80, 300, "CT kidney volume, adults about 80-300 ml each (Bakker 1999; Cheong 2007)"),
    "gallbladder": (5, 150, "fasting gallbladder 20-50 ml, far less after a meal (Everson 1980)"),
    "pancreas": (30, 150, "CT pancreas volume, adults about 50-100 ml, less with age (Saisho 2007)"),
    "stomach": (50, 2000, "depends on filling: about 50 ml empty to 1-2 l distended"),
    "aorta": (20, 400, "abdominal aorta alone about 20-60 ml; the whole thoracoabdominal aorta up to ~400 ml"),
    "inferior_vena_cava": (10, 150, "infrarenal to intrahepatic IVC, about 15-100 ml"),
    "esophagus": (5, 60, "about 20-40 ml over its length"),
    "duodenum": (20, 250, "about 50-150 ml, filling-dependent"),
    "adrenal_gland_right": (1.5, 15, "CT adrenal volume about 3-8 ml each"),
    "adrenal_gland_left": (1.5, 15, "CT adrenal volume about 3-8 ml each"),
    "lung_right": (800, 4500, "CT lung volume, about 1.5-3.5 l each at inspiration"),
    "lung_left": (700, 4000, "CT lung volume, about 1.3-3 l each at inspiration"),
    "urinary_bladder": (10, 800, "depends on filling: tens of ml to about 500 ml"),
    "prostate": (10, 150, "about 20-30 ml, larger with benign hyperplasia"),
    "femur_head_left": (20, 120, "femoral head about 40-70 ml"),
    "femur_head_right": (20, 120, "femoral head about 40-70 ml"),
    "portal_vein_and_splenic_vein": (5, 80, "about 15-40 ml"),
}
