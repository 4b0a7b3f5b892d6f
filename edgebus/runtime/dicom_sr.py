"""Structured reports out (`edgebus predict --dicom-sr`, highdicom, in the dicom extra): per ultrasound
DICOM frame, a Comprehensive 3D SR holding a TID 1500 Imaging Measurement Report, what a PACS and a
radiologist's reporting system read (issue #35).

One measurement group (TID 1410, planar ROI) per frame: the lesion's box on the source frame (a closed
polyline in the frame's pixels) or, where a DICOM SEG was written, a reference to its segment; the
finding type Mass; measurements Probability of cancer (DCM 111047, the shown, calibrated probability)
and, when the pixel size is known, Area (mm2), Width (along the transducer face) and Height (anteroposterior, along
the beam) in mm; qualitative evaluations: presence (Mass present or
absent), the label at the threshold (Malignant / Benign), and the BI-RADS descriptor findings the cart
states, coded from DICOM's breast ultrasound context groups (CID 6152-6155) where one exists and in
edgebus's private scheme (99EDGEBUS) where none does. A frame the presence rule calls lesion-free gets
"Mass: absent" and no malignancy call. The algorithm identification names edgebus, its version, and as
parameters every model file's sha256, the threshold and where it came from. The report is marked
neither complete nor verified: a machine's findings, for a person to read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebus.runtime.dicom_seg import _highdicom, save_referencing  # one writer of DICOM objects that reference a frame

PRIVATE = "99EDGEBUS"


def _codes(hd, codes) -> dict:
    """{descriptor name: (concept name, the present finding's value)} for the cart's BI-RADS words."""
    own = lambda v, m: hd.sr.CodedConcept(v, PRIVATE, m)  # noqa: E731
    return {
        "shape": (codes.SCT.Shape, codes.SCT.Irregular),
        "margin": (own("margin", "Margin"), own("not-circumscribed", "Not circumscribed")),
        "echogenicity": (codes.DCM.EchoPattern, codes.DCM.Hypoechoic),
        "posterior": (codes.DCM.PosteriorAcousticFeatures, codes.DCM.PosteriorShadowing),
        "halo": (codes.DCM.LesionBoundary, codes.DCM.EchogenicHalo),
        "calcifications": (own("calcifications", "Calcifications"), codes.SCT.CalcificationOfBreast),
    }


def _box_polyline(bbox, region) -> np.ndarray:
    """The lesion box as a closed polyline in the full frame's pixel coordinates (column, row)."""
    dx, dy = (region[0], region[1]) if region else (0, 0)
    x0, y0, x1, y1 = (float(v) for v in bbox)
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return np.array([(x + dx, y + dy) for x, y in pts], dtype=np.float32)


def write_sr(source: str | Path, res: dict, out: str | Path, cart: dict, seg_file: str | None = None) -> Path:
    """Write the SR of one frame's result `res` (a LesionPipeline row from a DICOM file) referencing
    `source`, atomically, to `out`. cart: LesionPipeline.describe(). seg_file: the DICOM SEG written
    for this frame, referenced instead of the box."""
    hd = _highdicom("writing a DICOM SR")
    import pydicom
    from pydicom.sr.codedict import codes

    source = Path(source)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    frame = int(res.get("frame") or 1)
    frames = [frame] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None
    algorithm = _algorithm(hd, res, cart)
    lesion = res.get("lesion")
    absent = (lesion is not None and not lesion["present"]) or (lesion is None and res.get("bbox") is None)
    evaluations, measurements = _findings(hd, codes, res, algorithm, absent)
    where, seg = {}, None
    if seg_file is not None:
        seg = pydicom.dcmread(seg_file, stop_before_pixels=True)
        where["referenced_segment"] = hd.sr.ReferencedSegmentationFrame(  # edgebus's SEG: one frame, segment 1
            seg.SOPClassUID, seg.SOPInstanceUID, 1, 1,
            hd.sr.SourceImageForSegmentation(ds.SOPClassUID, ds.SOPInstanceUID))
    else:
        bbox = res.get("bbox") if not absent else None
        box = bbox or [0, 0, int(ds.Columns), int(ds.Rows)]  # no lesion: the region looked at is the whole frame
        where["referenced_region"] = hd.sr.ImageRegion(
            hd.sr.GraphicTypeValues.POLYLINE, _box_polyline(box, res.get("region") if bbox else None),
            hd.sr.SourceImageForRegion(ds.SOPClassUID, ds.SOPInstanceUID, frames))
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(hd.UID(), f"frame {frame} lesion"), finding_type=codes.SCT.Mass,
        algorithm_id=algorithm, measurements=measurements or None, qualitative_evaluations=evaluations, **where)
    observer = hd.sr.ObserverContext(codes.DCM.Device, hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name="edgebus", manufacturer_name="edgebus", model_name="LesionPipeline"))
    report = hd.sr.MeasurementReport(hd.sr.ObservationContext(observer_device_context=observer),
                                     codes.SCT.UltrasonographyOfBreast, [group])
    return save_referencing(source, lambda: hd.sr.Comprehensive3DSR(
        evidence=[ds] + ([seg] if seg is not None else []), content=report,
        series_instance_uid=hd.UID(), series_number=9101, sop_instance_uid=hd.UID(), instance_number=frame,
        manufacturer="edgebus", is_complete=False, is_final=False, is_verified=False,
        series_description="edgebus lesion report (automatic, not reviewed)"), "DICOM SR", "a report", out)


def _algorithm(hd, res: dict, cart: dict):
    """The algorithm identification: edgebus and its version, with every model file's sha256 and the
    threshold as parameters, so a report names the exact cart that made it."""
    from edgebus import __version__

    params = [f"{role} {Path(str(m.get('file', ''))).name} sha256 {m.get('sha256', '')}" for role, m in cart.items()
              if isinstance(m, dict)]
    if res.get("threshold") is not None:
        params.append(f"threshold {res['threshold']}")
    return hd.sr.AlgorithmIdentification(name="edgebus LesionPipeline", version=__version__, parameters=params)


def _findings(hd, codes, res: dict, algorithm, absent: bool) -> tuple[list, list]:
    """(qualitative evaluations, measurements) of the frame: the mass present or absent and, only where
    present, the probability of cancer, the call at the threshold, the BI-RADS words and the area."""
    evaluations = [hd.sr.QualitativeEvaluation(codes.SCT.Mass, codes.SCT.Absent if absent else codes.SCT.Present)]
    measurements = []
    if not absent and res.get("prob_malignant") is not None:
        measurements.append(hd.sr.Measurement(codes.DCM.ProbabilityOfCancer, float(res["prob_malignant"]),
                                              codes.UCUM.NoUnits, algorithm_id=algorithm))
        call = codes.SCT.Malignant if res["label"] == "malignant" else codes.SCT.Benign
        evaluations.append(hd.sr.QualitativeEvaluation(
            hd.sr.CodedConcept("malignancy", PRIVATE, "Malignancy at the threshold"), call))
        coded = _codes(hd, codes)
        for name, d in (res.get("descriptors") or {}).items():
            if name in coded and d.get("probability", 0) >= 0.5:
                evaluations.append(hd.sr.QualitativeEvaluation(*coded[name]))
        shape = res.get("shape") or {}
        if shape.get("orientation") is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(
                codes.DCM.Orientation, codes.DCM.NotParallel if shape["orientation"] > 1 else codes.DCM.Parallel))
    if not absent and res.get("mask_area_mm2") is not None:
        measurements.append(hd.sr.Measurement(codes.SCT.Area, float(res["mask_area_mm2"]), codes.UCUM.SquareMillimeter))
    if not absent and res.get("lesion_width_mm") is not None:  # none where nothing was segmented (area 0)
        mm = codes.UCUM.Millimeter
        measurements += [hd.sr.Measurement(codes.SCT.Width, float(res["lesion_width_mm"]), mm),
                         hd.sr.Measurement(codes.DCM.Height, float(res["lesion_height_mm"]), mm)]
    return evaluations, measurements
