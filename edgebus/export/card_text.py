"""What a model card says in words rather than measures: what the model is for and not for, what its
training data was, and its known limits. Kept apart from the card's measured parts
(edgebus.export.model_card) so the wording a reader relies on is reviewed in one place."""

from __future__ import annotations

from pathlib import Path

from edgebus.core.errors import flag
from edgebus.data.arrays import trained_on_synthetic

DATASET = ("BrEaST-Lesions_USG (TCIA), breast ultrasound of one centre; Pawłowska et al., Sci Data 11:148, 2024; "
           "CC BY 4.0")
INTENDED_USE = {
    "classify": "Decision support for a clinician reading a breast-ultrasound frame of a lesion already found: a "
                "malignancy probability at a stated operating point, with BI-RADS-style findings where the model "
                "has them. The reader decides; the output is a second opinion, not a diagnosis.",
    "segment": "Outlining a breast lesion already found on an ultrasound frame, for its size (mm^2) and position; "
               "the outline is checked by the reader.",
}
NOT_FOR = [
    "screening or finding lesions (every training image holds a lesion a radiologist chose)",
    "ruling out cancer or deferring a biopsy on its own",
    "images other than 2D B-mode breast ultrasound (Doppler, elastography, other organs)",
    "patients or devices unlike the training data without a local validation (see the limits)",
]


def dataset_text(data) -> str:
    """What the training data was, from the run's data entry (a synthetic set says so)."""
    if data is None:
        return "not recorded"
    root = Path(data.root)
    if data.format == "busi":
        return f"BUSI layout at {root.name} (Al-Dhabyani et al., Data in Brief 28, 2020)"
    if trained_on_synthetic(data):
        return f"a SYNTHETIC set in the BrEaST layout made by 'edgebus synth' ({root.name}): not patient data"
    return DATASET


def model_card_limits(n_lesions) -> list[str]:
    """The card's known limits: what its data and its evidence do not cover, and what to check before use."""
    return [
        f"trained on {n_lesions or '?'} lesions from one centre's ultrasound archive; the sheet "
        "does not record the scanner per image, so no scanner is known to be covered",
        "every training image holds a lesion; normal frames and frames without a lesion were not seen",
        "the stress benchmark (edgebus stress) shows how much blur and lower resolution cost; before use at "
        "a new site, run its own labelled cases through the cart and check the threshold there "
        "(edgebus site-check): each unseen scanner setting shifts all scores together; where it misses, with "
        "at least 50 labelled cancers, edgebus site-threshold puts the site's own threshold on a copy of the cart",
        "on BrEaST the frame geometry alone predicts malignancy (field depth AUC 0.71): an estimate from case "
        "folds, where every scanner setting is also in training, overstates what a new scanner gets; the "
        f"estimate from folds grouped by acquisition (edgebus cv {flag('group_by')} acquisition) is the one to "
        "expect",
        "subgroups with few cases have wide intervals; a blank cell means the rate is undefined there",
    ]
