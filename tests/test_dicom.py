"""Tests for DICOM rendering (plm_tune.data.dicom), its hook in plm_tune.data.media and the from_dicom adapter.

Every file is a real one shipped with pydicom (``pydicom/data/test_files``) or pydicom-data
(``data_store/data``), found offline with ``get_testdata_file(name, download=False)``. Expected pixels come
from pydicom's own pipeline functions (apply_modality_lut, apply_voi_lut, apply_color_lut,
convert_color_space) on pydicom's decoded stored values, scaled to 8 bit over the window's output range,
which each test writes out from the file's Bits Stored, Pixel Representation and rescale.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("data_store", reason="pydicom-data (plm-tune[dicom]) ships the larger test files")

from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import (  # noqa: E402
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    get_decoder,
    pixel_array,
)

from data_adapters._records import BadRecord  # noqa: E402
from data_adapters.dicom import PHI_TAGS, from_dicom  # noqa: E402
from plm_tune import PLMCollator, load_image, load_video, validate_sample  # noqa: E402
from plm_tune.data.dicom import DicomError, dicom_frame_count, dicom_to_frames, read_dicom_header  # noqa: E402
from plm_tune.data.media import pick_uniform  # noqa: E402

TEMPLATE = "{Modality} {BodyPartExamined}: {StudyDescription}"

# pydicom warns as it reads the deliberately broken or padded files used below.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(excess padding|before delimiter|Invalid value for VR IS).*:UserWarning")


def shipped(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path, f"{name} is not installed: pip install 'plm-tune[dicom]' (pydicom + pydicom-data)"
    return path


def to_8bit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint((values.astype(np.float64) - low) * 255 / (high - low)), 0, 255).astype(np.uint8)


def grey(frames: np.ndarray) -> np.ndarray:
    """The single channel of greyscale frames rendered as RGB (checking the three channels agree)."""
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
    assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 0] == frames[..., 2]).all()
    return frames[..., 0]


def read(name: str):
    ds = pydicom.dcmread(shipped(name))
    return ds, ds.pixel_array


# --------------------------------------------------------------------------------------------------------
# Greyscale: Modality LUT, VOI, MONOCHROME1
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "low", "high"), [
    # CT head: 14-bit signed stored values, rescale to HU (slope 1, intercept -1024), window 40 / 100.
    pytest.param("693_UNCR.dcm", -(2**13) - 1024, 2**13 - 1 - 1024, id="CT-head"),
    # MR shoulder: 12-bit unsigned, rescale slope 3.774114 intercept 0.000061, window 1000 / 2000.
    pytest.param("MR2_UNCR.dcm", 0 * 3.774114 + 0.000061, (2**12 - 1) * 3.774114 + 0.000061, id="MR-shoulder"),
])
def test_ct_and_mr_modality_lut_and_window_match_pydicom(name, low, high):
    ds, stored = read(name)
    values = apply_modality_lut(stored, ds)
    expected = to_8bit(apply_voi_lut(values, ds), low, high)
    frames = dicom_to_frames(shipped(name))
    assert frames.shape == (1, ds.Rows, ds.Columns, 3)
    assert (grey(frames)[0] == expected).all()
    if ds.Modality == "CT":  # the brain window: air black, bone white
        assert (grey(frames)[0][values < -10] == 0).all() and (grey(frames)[0][values > 90] == 255).all()


def test_ct_without_window_is_stretched_over_its_hounsfield_range():
    ds, stored = read("CT_small.dcm")  # rescale to HU, no window in the file
    hu = apply_modality_lut(stored, ds)
    assert "WindowCenter" not in ds and ds.RescaleIntercept == -1024
    assert (grey(dicom_to_frames(shipped("CT_small.dcm")))[0] == to_8bit(hu, hu.min(), hu.max())).all()


def test_modality_lut_and_voi_lut_sequences_match_pydicom():
    ds, stored = read("mlut_18.dcm")  # a Modality LUT Sequence (12-bit signed in, 16-bit out), no window
    values = apply_modality_lut(stored, ds)
    assert (grey(dicom_to_frames(shipped("mlut_18.dcm")))[0] == to_8bit(values, values.min(), values.max())).all()

    ds, stored = read("vlut_04.dcm")  # a VOI LUT Sequence with 16-bit entries
    expected = to_8bit(apply_voi_lut(stored, ds), 0, 2**16 - 1)
    assert (grey(dicom_to_frames(shipped("vlut_04.dcm")))[0] == expected).all()


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_padded.dcm"])
def test_mr_renders_the_same_from_every_transfer_syntax(name):
    ds, stored = read("MR_small.dcm")  # 16-bit signed, window 600 / 1600
    expected = to_8bit(apply_voi_lut(stored, ds), -(2**15), 2**15 - 1)
    assert (grey(dicom_to_frames(shipped(name)))[0] == expected).all()


def test_cr_chest_monochrome1_is_inverted():
    ds, stored = read("RG1_UNCR.dcm")  # CR chest, MONOCHROME1, 15-bit, window 15000 / 30000
    assert (ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation) == ("CR", "CHEST", "MONOCHROME1")
    frames = dicom_to_frames(shipped("RG1_UNCR.dcm"))
    assert (grey(frames)[0] == 255 - to_8bit(apply_voi_lut(stored, ds), 0, 2**15 - 1)).all()
    ds.PhotometricInterpretation = "MONOCHROME2"  # the same pixels, read as "low is black"
    assert (dicom_to_frames(ds) == 255 - frames).all()


def test_nm_without_window_and_its_jpeg2000_twin():
    ds, stored = read("JPEG2000_UNC.dcm")  # NM whole-body bone scan, 16-bit signed, no rescale, no window
    frames = dicom_to_frames(shipped("JPEG2000_UNC.dcm"))
    assert (ds.Modality, frames.shape) == ("NM", (1, 1024, 256, 3))
    assert (grey(frames)[0] == to_8bit(stored, stored.min(), stored.max())).all()
    assert (dicom_to_frames(shipped("JPEG2000.dcm")) == frames).all()  # the same scan, JPEG 2000 compressed


def test_enhanced_ct_takes_rescale_and_window_from_functional_groups():
    ds, stored = read("eCT_Supplemental.dcm")  # 2 frames; rescale and window live only in the shared groups
    assert "WindowCenter" not in ds and "RescaleIntercept" not in ds
    view = pydicom.Dataset()
    view.PhotometricInterpretation, view.BitsStored, view.PixelRepresentation = "MONOCHROME2", 16, 0
    view.RescaleSlope, view.RescaleIntercept, view.WindowCenter, view.WindowWidth = 1, -1024, 49, 102
    expected = to_8bit(apply_voi_lut(apply_modality_lut(stored, view), view), -1024, 2**16 - 1 - 1024)
    assert (grey(dicom_to_frames(shipped("eCT_Supplemental.dcm"))) == expected).all()


# --------------------------------------------------------------------------------------------------------
# Colour: palette, YBR, deep RGB
# --------------------------------------------------------------------------------------------------------
def test_palette_colour_matches_apply_color_lut():
    ds, stored = read("examples_palette.dcm")  # US, 16-bit palette entries
    expected = (apply_color_lut(stored, ds) >> 8).astype(np.uint8)
    assert (dicom_to_frames(shipped("examples_palette.dcm"))[0] == expected).all()
    # A big-endian copy: pydicom 3.0's apply_color_lut alone reads its LUT as little endian.
    assert (dicom_to_frames(shipped("OBXXXX1A_expb.dcm")) == dicom_to_frames(shipped("OBXXXX1A.dcm"))).all()


def test_preamble_less_acr_nema_palette_file():
    path = shipped("OT-PAL-8-face.dcm")  # no 128-byte preamble, no file meta, no transfer syntax
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)
    assert (dicom_to_frames(path)[0] == expected).all()
    assert read_dicom_header(path).PhotometricInterpretation == "PALETTE COLOR"


@pytest.mark.parametrize(("name", "space"), [
    ("SC_ybr_full_uncompressed.dcm", "YBR_FULL"),
    ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422"),
    ("SC_rgb_dcmtk_+eb+cy+n1.dcm", "YBR_FULL"),  # JPEG baseline
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "YBR_FULL_422"),  # JPEG baseline, chroma subsampled
])
def test_ybr_is_converted_to_rgb_like_convert_color_space(name, space):
    assert pydicom.dcmread(shipped(name), stop_before_pixels=True).PhotometricInterpretation == space
    expected = convert_color_space(pixel_array(shipped(name), raw=True), "YBR_FULL", "RGB")
    frames = dicom_to_frames(shipped(name))
    assert (frames[0] == expected).all()
    reference = dicom_to_frames(shipped("SC_rgb.dcm")).astype(int)  # the same colour bars stored as RGB
    assert np.abs(frames.astype(int) - reference).mean() < 3


@pytest.mark.parametrize("name", ["SC_rgb_16bit.dcm", "SC_rgb_32bit.dcm", "SC_rgb_expb_16bit.dcm"])
def test_rgb_deeper_than_8_bits_keeps_its_top_8_bits(name):
    assert (dicom_to_frames(shipped(name)) == dicom_to_frames(shipped("SC_rgb.dcm"))).all()


def test_multiframe_ultrasound_frames_match_convert_color_space():
    path = shipped("examples_ybr_color.dcm")  # US cine: 30 frames, JPEG baseline YBR_FULL_422
    assert dicom_frame_count(read_dicom_header(path)) == 30
    frames = dicom_to_frames(path, frames=[0, 29])
    for got, index in zip(frames, [0, 29], strict=True):
        expected = convert_color_space(pixel_array(path, index=index, raw=True), "YBR_FULL_422", "RGB")
        assert (got == expected).all()
    with pytest.raises(ValueError, match="30 frame"):
        dicom_to_frames(path, frames=[30])


# --------------------------------------------------------------------------------------------------------
# plm_tune.data.media on .dcm paths
# --------------------------------------------------------------------------------------------------------
def test_load_image_renders_a_dcm_any_case_and_refuses_a_multiframe_one(tmp_path):
    path = shutil.copy(shipped("MR_small.dcm"), tmp_path / "scan.DCM")
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (64, 64)
    assert (np.asarray(image) == dicom_to_frames(path)[0]).all()
    with pytest.raises(ValueError, match="30 frames.*'videos'"):
        load_image(shipped("examples_ybr_color.dcm"))


def test_load_video_picks_dicom_frames_uniformly_with_both_ends():
    path = shipped("examples_ybr_color.dcm")
    every_frame = dicom_to_frames(path)
    assert pick_uniform(30, 4) == [0, 10, 19, 29]
    for entry in (path, {"path": path, "start": None, "end": None}):
        assert (load_video(entry, num_frames=4) == every_frame[[0, 10, 19, 29]]).all()
    with pytest.raises(ValueError, match="clip bounds"):
        load_video({"path": path, "start": 1.0, "end": None}, num_frames=4)


# --------------------------------------------------------------------------------------------------------
# Broken files
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "reason", "detail"), [
    ("MR_truncated.dcm", "truncated file", "9630 bytes long"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated file", "without its closing delimiter"),
    ("rtplan.dcm", "no pixel data", "RT Plan Storage"),
    ("rtplan_truncated.dcm", "no pixel data", "RT Plan Storage"),
    ("badVR.dcm", "corrupt header", "NumberOfFrames is '1A'"),
    ("nested_priv_SQ.dcm", "corrupt header", "no Rows, Columns"),
    ("zipMR.gz", "not a DICOM file", "no 'DICM' marker"),
])
def test_broken_files_raise_errors_naming_file_and_problem(name, reason, detail):
    path = shipped(name)
    with pytest.raises(DicomError) as header_error:
        read_dicom_header(path)
    assert header_error.value.reason == reason and detail in str(header_error.value)
    assert path in str(header_error.value) and "Fix:" in str(header_error.value)
    with pytest.raises(DicomError) as render_error:
        dicom_to_frames(path)
    assert render_error.value.reason == reason and path in str(render_error.value)


def test_compressed_file_cut_mid_fragment_is_truncated(tmp_path):
    data = Path(shipped("emri_small_jpeg_2k_lossless.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 3000])
    with pytest.raises(DicomError, match=r"truncated file: the compressed fragment at byte \d+ needs"):
        read_dicom_header(cut)


def test_missing_decoder_is_found_from_the_header():
    path = shipped("JPEG-LL.dcm")  # JPEG Lossless (process 14): needs pylibjpeg-libjpeg or gdcm
    if get_decoder(pydicom.uid.JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    with pytest.raises(DicomError, match="no decoder installed.*pip install pylibjpeg"):
        read_dicom_header(path)


# --------------------------------------------------------------------------------------------------------
# from_dicom
# --------------------------------------------------------------------------------------------------------
SCANS = {  # path in the folder -> (shipped file, caption from TEMPLATE, frames)
    "cr/6154.dcm": ("6154", "CR CSPINE: XR C Spine Comp Min 4 Views", 1),  # MONOCHROME1, 16x16
    "ct/CT_small.dcm": ("CT_small.dcm", "CT: e+1", 1),
    "mr/MR_small.dcm": ("MR_small.dcm", "MR", 1),
    "mr/emri_small.dcm": ("emri_small.dcm", "MR HEAD", 10),
    "us/examples_palette.dcm": ("examples_palette.dcm", "US", 1),
}
BROKEN = {  # path -> (shipped file, reason)
    "bad/MR_truncated.dcm": ("MR_truncated.dcm", "truncated file"),
    "bad/emri_too_short.dcm": ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated file"),
    "bad/rtplan.dcm": ("rtplan.dcm", "no pixel data"),
    "bad/badVR.dcm": ("badVR.dcm", "corrupt header"),
    "bad/zipMR.dcm": ("zipMR.gz", "not a DICOM file"),
}


def _copy_tree(root: Path, files: dict) -> Path:
    for relative, (name, *_) in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shipped(name), root / relative)
    return root


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    return _copy_tree(tmp_path_factory.mktemp("scans"), SCANS)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    root = _copy_tree(tmp_path_factory.mktemp("mixed"), {**SCANS, **BROKEN})
    shutil.copy(shipped("DICOMDIR"), root / "DICOMDIR")  # not *.dcm: passed over, with a warning
    return root


def _answer(sample: dict) -> str:
    return sample["messages"][-1]["content"][0]["text"]


def test_single_frame_files_are_images_and_multiframe_files_videos(scans):
    dataset = from_dicom(scans, caption=TEMPLATE)
    assert sorted(dataset["id"]) == sorted(SCANS)
    for sample in dataset:
        _, caption, frames = SCANS[sample["id"]]
        kind = "video" if frames > 1 else "image"
        assert _answer(sample) == caption
        assert sample["messages"][0]["content"][0]["type"] == kind
        media = sample["images"] if kind == "image" else [v["path"] for v in sample["videos"]]
        assert media == [str((scans / sample["id"]).resolve())]
    assert dataset.skip_report.kept == len(SCANS) and dataset.skip_report.skipped == 0
    with pytest.raises(ValueError, match="no usable records"):
        from_dicom(scans, caption=TEMPLATE, recursive=False)  # the files are all in sub-folders


def test_patient_identifiers_never_reach_the_text_unless_allowed(scans):
    text_tags = "{Modality} {BodyPartExamined} {StudyDescription} {SeriesDescription} {ProtocolName}"
    dataset = from_dicom(scans, caption=text_tags, system_prompt="You are a radiologist.")
    for sample in dataset:
        header = read_dicom_header(scans / sample["id"])
        identifiers = [str(header.get(tag) or "").replace("^", " ").strip()
                       for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber")]
        text = json.dumps(sample["messages"])
        assert not [i for i in identifiers if i and i in text], sample["id"]
    for template in ("{PatientName}", "{Modality} {PatientID}", "{StudyDate}", "{PatientAge}", "{SOPInstanceUID}"):
        with pytest.raises(ValueError, match=r"identifies the patient.*allow_phi_tags"):
            from_dicom(scans, caption=template)
    allowed = from_dicom(scans / "cr", caption="{Modality} of {PatientName}", allow_phi_tags=("PatientName",))
    assert _answer(allowed[0]) == "CR of Doe Archibald"
    with pytest.raises(ValueError, match="Did you mean Modality"):
        from_dicom(scans, caption="{Modalty}")
    from pydicom.datadict import keyword_dict
    assert PHI_TAGS <= set(keyword_dict)


def test_captions_from_csv_by_file_name_and_jsonl_by_sop_instance_uid(scans, tmp_path):
    table = tmp_path / "captions.csv"
    table.write_text("file_name,caption\nct/CT_small.dcm,Axial CT.\nMR_small.dcm,An MR slice.\n"
                     "emri_small.dcm,Ten MR frames.\n")
    dataset = from_dicom(scans, captions_table=table, on_error="skip")
    assert {s["id"]: _answer(s) for s in dataset} == {
        "ct/CT_small.dcm": "Axial CT.", "mr/MR_small.dcm": "An MR slice.", "mr/emri_small.dcm": "Ten MR frames."}
    assert dataset.skip_report.counts == {"no caption": 2}
    with pytest.raises(BadRecord, match="no caption: no row of"):
        from_dicom(scans, captions_table=table)

    uid = str(read_dicom_header(scans / "cr/6154.dcm").SOPInstanceUID)
    lines = tmp_path / "captions.jsonl"
    lines.write_text(json.dumps({"SOPInstanceUID": uid, "caption": "Lateral cervical spine."}) + "\n")
    dataset = from_dicom([scans / "cr" / "6154.dcm"], captions_table=lines)
    assert _answer(dataset[0]) == "Lateral cervical spine." and dataset[0]["id"] == "6154.dcm"
    with pytest.raises(ValueError, match="exactly one of caption= .* or captions_table="):
        from_dicom(scans, caption=TEMPLATE, captions_table=lines)


def test_broken_files_raise_a_bad_record_or_are_counted_skips(mixed, caplog):
    with pytest.raises(BadRecord, match=r"bad/MR_truncated\.dcm: truncated file") as error:
        from_dicom(mixed, caption=TEMPLATE)
    assert 'on_error="skip"' in str(error.value)
    assert "passed over 1 file(s) not named *.dcm" in caplog.text
    with pytest.raises(BadRecord, match="not a .dcm file"):
        from_dicom([shipped("6154")], caption=TEMPLATE)  # named explicitly, but media.py would not see DICOM
    dataset = from_dicom(mixed, caption=TEMPLATE, on_error="skip")
    assert sorted(dataset["id"]) == sorted(SCANS)
    report = dataset.skip_report
    assert report.kept == len(SCANS)
    assert dict(report.counts) == {"truncated file": 2, "no pixel data": 1, "corrupt header": 1,
                                   "not a DICOM file": 1}


def test_num_proc_reads_the_same_samples_skips_and_notes(mixed):
    # Notes made in the worker processes (pydicom's, about non-standard values) must reach the report. The shipped
    # files hold no identifying free text: their empty dates are not search strings (no "identifying text removed").
    template = "{Modality} {BodyPartExamined}: {StudyDescription} {SeriesDescription}"
    serial, parallel = (from_dicom(mixed, caption=template, on_error="skip", num_proc=n, progress=False)
                        for n in (1, 2))
    assert len(serial) == len(SCANS) and parallel.to_list() == serial.to_list()
    assert parallel.skip_report == serial.skip_report
    assert set(serial.skip_report.notes) == {"pydicom note"}
    errors = []
    for n in (1, 2):
        with pytest.raises(BadRecord) as caught:
            from_dicom(mixed, caption=TEMPLATE, num_proc=n, progress=False)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "MR_truncated.dcm: truncated file" in errors[0]
    with pytest.raises(ValueError, match="num_proc must be .* 1 for a stream"):
        from_dicom(mixed, caption=TEMPLATE, streaming=True, num_proc=2)


def test_streaming_gives_the_same_samples_in_a_shard_per_file_that_workers_share(scans):
    from torch.utils.data import DataLoader

    stream = from_dicom(scans, caption=TEMPLATE, streaming=True)
    assert list(stream) == list(from_dicom(scans, caption=TEMPLATE))
    # Fewer files than SHARDS_PER_TABLE: one shard each, so 2 DataLoader workers split the folder between them.
    assert stream.num_shards == len(SCANS)
    read = list(DataLoader(stream, batch_size=None, num_workers=2, collate_fn=_id_and_worker))
    assert sorted(sample_id for sample_id, _ in read) == sorted(SCANS)  # each file once
    assert {worker for _, worker in read} == {0, 1}


def _id_and_worker(sample: dict) -> tuple[str, int]:
    """Run in the DataLoader worker that read ``sample``."""
    return sample["id"], torch.utils.data.get_worker_info().id


def test_adapter_output_validates_collates_and_trains(scans, processor, model):
    dataset = from_dicom(scans, caption=TEMPLATE, prompt="Report on this study.")
    samples = list(dataset)
    for sample in samples:
        validate_sample(sample)  # decodes every image and the first frame of every video
    batch = PLMCollator(processor, max_tiles=2, num_frames=4)(samples)
    assert batch["pixel_values_videos"].shape[1] == 4  # emri_small: 10 frames, 4 picked
    with torch.no_grad():
        loss = model(**batch).loss
    assert math.isfinite(loss.item())
