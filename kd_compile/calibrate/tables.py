"""Measured latency tables: readers of each published table format and :func:`load_measurements`.

Every reader turns its table's rows into :class:`MeasuredRow` s (one model, one device, runtime,
precision and batch, seconds per batch); NAS spaces (NAS-Bench-201, FBNet, Accel-NASBench, OFA) are
sampled (``NAS_SAMPLE`` architectures per space, seed 0), of which fits use the first ``NAS_FIT``.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

# ``shared/data/latency`` next to the repository (``KD_LATENCY_DATA`` overrides).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "latency"
# Published tables the shared folder lacks, shipped in the package (sources in its README.md); a
# file of the same name in the data folder takes precedence.
BUNDLED_DIR = Path(__file__).resolve().parent / "data"
NAS_SAMPLE = 200  # architectures per NAS space counted and evaluated (seed 0)
NAS_FIT = 100  # of which the fits use the first ones (fit time grows with kernels)

TIMM_TABLES = {
    "benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv": "rtx3090",
    "benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv": "rtx4090",
}
SUPERGRADIENTS = "supergradients_T4_trt_fp16_bs1_classification.csv"
# torch2trt's benchmark tables -> target name. The Jetson Nano's ships with kd-compile (``BUNDLED_DIR``).
TORCH2TRT = {"torch2trt-jetson-xavier-trt-fp16-bs1.csv": "jetson-agx-xavier",
             "torch2trt-jetson-nano-trt-fp16-bs1.csv": "jetson-nano"}
HELP_TABLES = {"help-nb201-latency.csv": "nb201", "help-fbnet-latency.csv": "fbnet"}
# Published tables no fit of the main constants reads, shipped in the package (``BUNDLED_DIR``): the one
# constant of a runtime those tables do not measure (``s_compile``) is fitted on them, and they give its
# error band (:func:`load_check_rows`, ``holdout.check_bands``). File -> (target, runtime, precision).
CHECK_TABLES = {
    "timm-benchmark-infer-amp-nchw-pt240-cu124-rtx4090-dynamo.csv": ("rtx4090", "inductor", "fp16"),
}
ACCEL_NASBENCH = "accel-nasbench-mbconv.csv"
# HELP's Once-for-All MobileNetV3 latencies (128-224 px), shipped (``BUNDLED_DIR``; a seeded sample of 500
# of its 5,000 subnets): the fits read these GPUs' columns of ``NAS_SAMPLE`` of the subnets; the V100's
# column and the other subnets are a test no fit reads (``benchmarks/external_check.py``).
HELP_OFA = "help-ofa-latency.csv"
OFA_FIT_DEVICES = ("2080ti", "titan-rtx", "titan-xp")
# HELP column prefix -> target name (titanx: the Pascal TITAN X, see titan-x.toml)
HELP_DEVICES = {"1080ti": "1080ti", "2080ti": "2080ti", "titan_rtx": "titan-rtx", "titanx": "titan-x",
                "titanxp": "titan-xp"}
# super-gradients model name -> timm model (same architecture; ViTs use patch 16)
SG_TO_TIMM = {
    "vit_base": "vit_base_patch16_224", "vit_large": "vit_large_patch16_224", "efficientnet_b0": "efficientnet_b0",
    "regnetY200": "regnety_002", "regnetY400": "regnety_004", "regnetY600": "regnety_006",
    "regnetY800": "regnety_008", "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
    "mobilenet_v3_large": "mobilenetv3_large_100", "mobilenet_v3_small": "mobilenetv3_small_100",
    "mobilenet_v2": "mobilenetv2_100",
}

# A diverse set of timm architectures (convnets, mobile nets, EfficientNets, ResNets, RegNets,
# ViTs/DeiTs, Swin, ConvNeXt, hybrids), small to large. Only those present in every table are
# used; the order is the order of preference when ``models`` limits the count.
CURATED = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet26", "resnet50d",
    "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "seresnet50", "ecaresnet50d",
    "resnetrs50", "resnet10t", "resnet14t", "skresnet18", "dla34", "dla60", "densenet121",
    "densenet169", "vgg11", "vgg16", "vgg19_bn", "inception_v3", "inception_v4", "xception41",
    "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140", "mobilenetv3_small_100",
    "mobilenetv3_large_100", "mobilenetv3_small_050", "mobilenetv3_large_075", "mnasnet_100",
    "mnasnet_small", "fbnetc_100", "spnasnet_100", "lcnet_050", "lcnet_100", "tinynet_a",
    "tinynet_c", "tinynet_e", "ghostnet_100", "efficientnet_b0", "efficientnet_b1",
    "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_lite0",
    "efficientnetv2_rw_s", "efficientnetv2_rw_m", "tf_efficientnetv2_s", "mixnet_s", "mixnet_l",
    "rexnet_100", "rexnet_150", "regnetx_002", "regnetx_004", "regnetx_016", "regnetx_032",
    "regnety_002", "regnety_004", "regnety_008", "regnety_016", "regnety_032", "regnety_040",
    "regnetz_b16", "hrnet_w18_small", "dpn68", "res2net50_26w_4s", "cspresnet50",
    "cspdarknet53", "darknet53", "repvgg_a2", "repvgg_b1", "gernet_s", "gernet_l",
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny",
    "convnext_small", "convnext_base", "convnextv2_tiny", "vit_tiny_patch16_224",
    "vit_small_patch16_224", "vit_small_patch32_224", "vit_base_patch16_224",
    "vit_base_patch32_224", "vit_large_patch16_224", "deit_tiny_patch16_224",
    "deit_small_patch16_224", "deit_base_patch16_224", "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224", "swin_base_patch4_window7_224", "beit_base_patch16_224",
    "cait_xxs24_224", "levit_128", "levit_256", "mobilevit_s", "mobilevit_xs", "edgenext_small",
    "efficientformer_l1", "poolformer_s12", "mixer_b16_224", "resmlp_12_224", "pit_s_224",
    "coat_lite_tiny", "crossvit_small_240", "twins_svt_small", "xcit_tiny12_p16_224",
    "maxvit_tiny_tf_224", "coatnet_0_rw_224", "fastvit_t8", "repvit_m1", "tiny_vit_5m_224",
    "efficientvit_b0", "mobileone_s0", "hgnet_tiny", "nfnet_l0", "dm_nfnet_f0",
)

# Architecture families for leave-one-family-out (first matching pattern wins).
FAMILIES: tuple[tuple[str, str], ...] = (
    ("nb201", r"^nb201:"), ("fbnet", r"^fbnet:"), ("anb", r"^anb:"), ("ofa", r"^ofa:"),
    ("vit", r"(vit_|deit|beit|cait|pit_|crossvit|twins|xcit|levit|mixer|resmlp|swin|maxvit|coat|"
            r"efficientformer|poolformer|mobilevit|edgenext|efficientvit|tiny_vit|fastvit)"),
    ("regnet", r"regnet"), ("efficientnet", r"efficientnet"),
    ("mobilenet", r"(mobilenet|mnasnet|fbnetc|spnasnet|lcnet|tinynet|ghostnet|rexnet|mixnet|repvit|mobileone|"
                  r"shufflenet|squeezenet)"),
    ("convnext", r"convnext"), ("densenet", r"densenet"), ("vgg", r"(vgg|alexnet|repvgg)"),
    ("resnet", r"(resnet|resnext|res2net|dla|dpn|darknet|gernet|inception|xception|hrnet|hgnet|nfnet)"),
)


# How an error band names the families it was measured on (``holdout.bands``). HELP's two NAS
# spaces were measured on 32-px CIFAR inputs (every other table at ImageNet sizes), which a band
# on them has to say: an ImageNet-size model reaches a larger share of peak
# (``benchmarks/external_check.py``).
FAMILY_LABELS: dict[str, str] = {
    "nb201": "NAS-Bench-201 (32 px)", "fbnet": "FBNet (32 px)", "anb": "Accel-NASBench MBConv",
    "ofa": "OFA MobileNetV3 (128-224 px)", "vit": "ViT-like",
    "regnet": "RegNet", "efficientnet": "EfficientNet", "mobilenet": "mobile nets", "convnext": "ConvNeXt",
    "densenet": "DenseNet", "vgg": "VGG/AlexNet", "resnet": "ResNet-like", "other": "other",
}


# A row of a timm-format table measured on the folded (deployed) form of a re-parameterisable model
# says so in a ``deploy_form`` column, ``folded`` (kd-compile's own tables: ``profile`` folds RepVGG, MobileOne,
# RepViT, FastViT before it measures); its spec ends in ``FOLDED`` and the model is counted folded
# (``counts._build``). timm's own benchmark measures a model as built (its ``--reparam`` is off by
# default), and its rows are counted so.
FOLDED = "+folded"


def timm_spec_parts(spec: str) -> tuple[str, int, bool]:
    """(model name, image size, folded) of a ``timm:<name>@<size>[+folded]`` spec."""
    rest = spec.removeprefix("timm:")
    folded = rest.endswith(FOLDED)
    name, size = rest.removesuffix(FOLDED).rsplit("@", 1)
    return name, int(size), folded


def family_of(spec: str) -> str:
    """The architecture family of a spec (``FAMILIES``), ``other`` when none matches."""
    for name, pat in FAMILIES:
        if re.search(pat, spec):
            return name
    return "other"


@dataclass(frozen=True)
class MeasuredRow:
    """One published measurement.

    Attributes:
        spec: the architecture (``timm:<name>@<size>``, ``torchvision:<name>``, ``nb201:...``,
            ``fbnet:...``, ``anb:...``, ``ofa:...``).
        device: target name.
        runtime: ``torch`` (eager) or ``tensorrt``.
        precision: ``fp32`` or ``fp16``.
        batch: batch size.
        seconds: time per batch.
        file: name of the measured table.
    """

    spec: str
    device: str
    runtime: str
    precision: str
    batch: int
    seconds: float
    file: str

    @property
    def family(self) -> str:
        return family_of(self.spec)

    @property
    def group(self) -> tuple[str, str, int, str]:
        """(device, runtime, batch, file): the unit a Spearman correlation is computed over."""
        return (self.device, self.runtime, self.batch, self.file)


# -- readers ---------------------------------------------------------------------------------


# a measured table is a few thousand rows; anything far larger is not one (and is not read)
_MAX_TABLE_BYTES = 64 << 20
_TIMM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _dict_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV table (``#`` lines are comments).

    Raises:
        UsageError: the file is too large, unreadable, not UTF-8 text or not CSV.
    """
    try:
        size = Path(path).stat().st_size
        if size > _MAX_TABLE_BYTES:
            raise UsageError(f"{path}: {size} bytes is too large for a measured table")
        with Path(path).open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(line for line in f if not line.startswith("#")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        why = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).splitlines()[0]
        raise UsageError(f"{path}: not a readable CSV table ({why})") from None


# a user's own table may name its columns plainly: the first present name of each is read
_SIZE_COLS = ("infer_img_size", "img_size", "image_size")
_BATCH_COLS = ("infer_batch_size", "batch_size", "batch")
TABLE_COLUMNS = ("model, infer_img_size (or img_size), infer_batch_size (or batch), and infer_step_time or "
                 "latency_ms (ms per batch) or infer_samples_per_sec")


def _first(r: dict[str, str], names: Sequence[str]) -> str | None:
    return next((r[n] for n in names if (r.get(n) or "").strip()), None)


def _batch_ms(r: dict[str, str], batch: int) -> float:
    """A row's time per batch in ms: timm's ``infer_step_time``, a plain ``latency_ms``, or the
    batch over timm's ``infer_samples_per_sec``."""
    ms = _first(r, ("infer_step_time", "latency_ms"))
    if ms is not None:
        return float(ms)
    return batch / float(r["infer_samples_per_sec"]) * 1e3


def read_timm_table(path: Path, device: str = "", runtime: str = "torch", precision: str = "fp16") -> list[MeasuredRow]:
    """Rows of a timm ``benchmark-infer-*.csv`` (columns documented in the data README), or of a
    user's table with the same content under plainer names (``TABLE_COLUMNS``).

    Raises:
        UsageError: no row has model, image size, batch and a time.
    """
    rows: list[MeasuredRow] = []
    for r in _dict_rows(path):
        try:
            size, batch = int(_first(r, _SIZE_COLS) or ""), int(_first(r, _BATCH_COLS) or "")
            ms = _batch_ms(r, batch)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            continue
        # a measurement is a positive finite time of a named model; anything else is not one
        if not (_TIMM_NAME.fullmatch(r.get("model") or "") and 0 < size <= 4096 and 0 < batch <= 1 << 16):
            continue
        if not (math.isfinite(ms) and ms > 0):
            continue
        folded = FOLDED if (r.get("deploy_form") or "").strip().lower() == "folded" else ""
        rows.append(MeasuredRow(f"timm:{r['model']}@{size}{folded}", device, runtime, precision, batch, ms * 1e-3,
                                Path(path).name))
    if not rows:
        raise UsageError(f"{path}: no measured rows (need the columns {TABLE_COLUMNS})")
    return rows


def read_supergradients(path: Path) -> list[MeasuredRow]:
    """T4 and Xavier NX TensorRT fp16 batch-1 rows (``*_hw_ms``: without I/O)."""
    out = []
    for r in _dict_rows(path):
        name = SG_TO_TIMM.get(r.get("sg_model_name", ""))
        if name is None:
            continue
        for col, dev in (("t4_hw_ms", "t4"), ("xaviernx_hw_ms", "jetson-xavier-nx")):
            if r.get(col):
                out.append(MeasuredRow(f"timm:{name}@{int(r['resolution'])}", dev, "tensorrt", "fp16", 1,
                                       float(r[col]) * 1e-3, Path(path).name))
    return out


def read_torch2trt(path: Path, device: str = "jetson-agx-xavier") -> list[MeasuredRow]:
    """Rows of one of torch2trt's Jetson tables: TensorRT fp16 and eager PyTorch fp16, batch 1, 224 px."""
    out = []
    for r in _dict_rows(path):
        spec = f"torchvision:{r['torchvision_model']}"
        for col, rt in (("latency_tensorrt_ms", "tensorrt"), ("latency_pytorch_ms", "torch")):
            if r.get(col):
                out.append(MeasuredRow(spec, device, rt, "fp16", 1, float(r[col]) * 1e-3, Path(path).name))
    return out


def _sample(keys: Sequence[str], n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    keys = sorted(set(keys))
    return [keys[i] for i in rng.permutation(len(keys))[:n]]


def read_help(path: Path, space: str, n: int = NAS_SAMPLE,
              devices: Mapping[str, str] = HELP_DEVICES) -> list[MeasuredRow]:
    """HELP NAS-Bench-201/FBNet rows of ``n`` sampled architectures on ``devices`` (column prefix ->
    device name; default the five desktop GPUs): columns ``<prefix>_<batch>_ms``, or ``<prefix>_ms``
    at batch 1 (HELP's CPU columns)."""
    recs = {f"{space}:{r['arch_str']}": r for r in _dict_rows(path)}
    col = re.compile(rf"^({'|'.join(map(re.escape, devices))})(?:_(\d+))?_ms$")
    out = []
    for spec in _sample(list(recs), n):
        for c, v in recs[spec].items():
            m = col.match(c)
            if m and v:
                out.append(MeasuredRow(spec, devices[m.group(1)], "torch", "fp32", int(m.group(2) or 1),
                                       float(v) * 1e-3, Path(path).name))
    return out


def read_accel_nasbench(path: Path, n: int = NAS_SAMPLE) -> list[MeasuredRow]:
    """Accel-NASBench rows of ``n`` sampled architectures: RTX 3090 and A100, batch 128."""
    from ..students.anb import anb_spec_from_row

    recs: dict[str, dict[str, str]] = {}
    for r in _dict_rows(path):
        if r.get("3090_ms_per_batch128") and r.get("a100_ms_per_batch128"):
            recs.setdefault(f"anb:{anb_spec_from_row(r)}", r)
    out = []
    for spec in _sample(list(recs), n):
        for col, dev in (("3090_ms_per_batch128", "rtx3090"), ("a100_ms_per_batch128", "a100")):
            out.append(MeasuredRow(spec, dev, "torch", "fp16", 128, float(recs[spec][col]) * 1e-3, Path(path).name))
    return out


def ofa_fit_specs(path: Path | None = None, n: int = NAS_SAMPLE) -> list[str]:
    """The subnets of HELP's OFA table (``HELP_OFA``) that :func:`read_help_ofa` samples, in its order."""
    return _sample([r["spec"] for r in _dict_rows(path or BUNDLED_DIR / HELP_OFA)], n)


def read_help_ofa(path: Path, n: int = NAS_SAMPLE, devices: Sequence[str] = OFA_FIT_DEVICES) -> list[MeasuredRow]:
    """HELP's OFA MobileNetV3 rows of ``n`` sampled subnets on ``devices``: eager fp32, batch 1/32/64."""
    recs = {r["spec"]: r for r in _dict_rows(path)}
    col = re.compile(r"^(.+)_b(\d+)_ms$")
    out = []
    for spec in _sample(list(recs), n):  # ofa_fit_specs's sample, from the rows already read
        for c, v in recs[spec].items():
            m = col.match(c)
            if m and m.group(1) in devices and v:
                out.append(MeasuredRow(spec, m.group(1), "torch", "fp32", int(m.group(2)), float(v) * 1e-3,
                                       Path(path).name))
    return out


def select_timm(rows: Sequence[MeasuredRow], tables: int = 2) -> list[MeasuredRow]:
    """Rows of curated timm models measured in every timm table, at the smallest common size."""
    by_model: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in rows:
        name, size, _ = timm_spec_parts(r.spec)
        by_model[name][size].add(r.file)
    keep = set()
    for name in CURATED:
        sizes = sorted(s for s, files in by_model.get(name, {}).items() if len(files) >= tables)
        if sizes:
            keep.add((name, sizes[0]))
    return [r for r in rows if timm_spec_parts(r.spec)[:2] in keep]


def load_measurements(data_dir: Path | None = None, nas: int = NAS_SAMPLE) -> list[MeasuredRow]:
    """Every usable row of the shared measured tables and of the bundled ones (see the module docstring).

    Raises:
        UsageError: the folder does not exist.
    """
    d = Path(data_dir or os.environ.get("KD_LATENCY_DATA") or DEFAULT_DATA_DIR)
    if not d.is_dir():
        raise UsageError(f"measured latency tables not found in {d}", hint="set KD_LATENCY_DATA or pass data_dir")
    timm_rows = [r for f, dev in TIMM_TABLES.items() if (d / f).is_file() for r in read_timm_table(d / f, dev)]
    rows = select_timm(timm_rows, tables=sum((d / f).is_file() for f in TIMM_TABLES))
    if (d / SUPERGRADIENTS).is_file():
        rows += read_supergradients(d / SUPERGRADIENTS)
    for f, dev in TORCH2TRT.items():
        path = d / f if (d / f).is_file() else BUNDLED_DIR / f
        if path.is_file():
            rows += read_torch2trt(path, dev)
    for f, space in HELP_TABLES.items():
        if (d / f).is_file():
            rows += read_help(d / f, space, nas)
    if (d / ACCEL_NASBENCH).is_file():
        rows += read_accel_nasbench(d / ACCEL_NASBENCH, nas)
    ofa = d / HELP_OFA if (d / HELP_OFA).is_file() else BUNDLED_DIR / HELP_OFA
    if ofa.is_file():
        rows += read_help_ofa(ofa, nas)
    return rows


def load_check_rows(specs: set[str] | None = None) -> list[MeasuredRow]:
    """The rows of the shipped ``CHECK_TABLES`` (``torch.compile``), those of ``specs`` only when given."""
    rows: list[MeasuredRow] = []
    for f, (device, runtime, precision) in CHECK_TABLES.items():
        if (BUNDLED_DIR / f).is_file():
            rows += [r for r in read_timm_table(BUNDLED_DIR / f, device, runtime, precision)
                     if specs is None or r.spec in specs]
    return rows
