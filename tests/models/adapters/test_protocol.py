"""The adapter construction protocol (``base.MultiTaskAdapter.from_config`` / ``from_arch``): every adapter module
names its protocol class ``ADAPTER``, its module-level ``build`` / ``from_arch`` delegate to it, and the shared
prologue checks keys (did-you-mean) and merges class names the same way for every adapter."""

from __future__ import annotations

import importlib

import pytest
import torch

from mtkd.errors import CheckpointError, ConfigError
from mtkd.models.adapters.base import MultiTaskAdapter
from mtkd.models.build import ADAPTERS, build_from_arch, build_model
from mtkd.models.yolo_mt import YoloMT

YOLOP, ANCHOR_FREE = "mtkd_adapter_toys:YoloPLike", "mtkd_adapter_toys:AnchorFreeToy"


def _protocol(name: str) -> type[MultiTaskAdapter]:
    return importlib.import_module(ADAPTERS[name]).ADAPTER


def test_every_adapter_module_names_its_protocol_class():
    for name in ADAPTERS:
        cls = _protocol(name)
        assert issubclass(cls, MultiTaskAdapter) and cls.adapter_name == name
        assert cls.config_keys and "adapter" in cls.config_keys and cls.adapter_label != "adapter"
        assert "_from_config" in vars(cls) and "_from_arch" in vars(cls), name


@pytest.mark.parametrize("name", ["generic_yolop_anchor", "generic_anchor_free"])
def test_module_functions_and_classmethods_build_the_same_model(toys, adapter_cases, name):
    config, nc_det, nc_seg = adapter_cases[name]
    module = importlib.import_module(ADAPTERS["generic"])
    torch.manual_seed(0)
    a = module.build(config, nc_det, nc_seg)
    torch.manual_seed(0)
    b = module.ADAPTER.from_config(config, nc_det, nc_seg)
    assert type(a) is type(b) and a.arch() == b.arch()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    trust = [config["target"]]
    assert (
        module.from_arch(a.arch(), trust_code=trust).arch()
        == module.ADAPTER.from_arch(a.arch(), trust_code=trust).arch()
    )


def test_native_protocol_builds_plain_yolo_mt():
    """``NativeAdapter`` only carries the protocol: saved/pickled models keep naming ``mtkd.models.yolo_mt.YoloMT``."""
    cls = _protocol("native")
    model = cls.from_config({"adapter": "native", "name": "yolo_mt_n"}, 2, 3, ["a", "b"], ["x", "y", "z"])
    assert type(model) is YoloMT and model.adapter_name == "native"
    again = cls.from_arch(model.arch())
    assert type(again) is YoloMT and again.arch() == model.arch()
    assert type(build_model("yolo_mt_n", nc_det=1, nc_seg=1)) is YoloMT


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("native", {"adapter": "native", "name": "yolo_mt_n", "haed": "anchor"},
         r"^native adapter: unknown field 'haed' \(did you mean 'head'\?\)$"),
        ("generic", {"adapter": "generic", "stride": [8]}, r"^generic adapter: unknown field 'stride' \(did you mean 'strides'\?\)$"),
        ("ultralytics", {"adapter": "ultralytics", "model": "yolov8n.yaml", "seghead": {}},
         r"^ultralytics adapter: unknown field 'seghead' \(did you mean 'seg_head'\?\)$"),
        ("smp", {"adapter": "smp", "arch": "Unet", "encoder": "x"}, r"^smp adapter: unknown field 'encoder' \(did you mean"),
        ("composite", {"adapter": "composite", "det": {}, "sge": {}}, r"^composite adapter: unknown field 'sge' \(did you mean 'seg'\?\)$"),
        ("composite", {"adapter": "composite", "zzz": 1}, r"^composite adapter: unknown field 'zzz'; allowed: adapter, head, det, seg$"),
    ],
)  # fmt: skip
def test_prologue_refuses_unknown_config_keys_before_building_anything(name, config, match):
    with pytest.raises(ConfigError, match=match):
        _protocol(name).from_config(config, 1, 1, ["a"], ["b"])


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ({"adapter": "native", "layerz": {}}, r"^native adapter arch: unknown field 'layerz' \(did you mean 'layers'\?\)"),
        ({"adapter": "generic", "targt": "os:system"}, r"^generic adapter arch: unknown field 'targt' \(did you mean 'target'\?\)"),
        ({"adapter": "ultralytics", "yaml": {}, "model": "x"}, r"^ultralytics adapter arch: unknown field 'model'"),
        ({"adapter": "composite", "det": {}, "seg": {}, "x": 1}, r"^composite adapter arch: unknown field 'x'"),
    ],
)  # fmt: skip
def test_prologue_refuses_unknown_arch_keys(arch, match):
    with pytest.raises(ConfigError, match=match):
        build_from_arch(arch, trust_code=True)


def test_prologue_merges_class_names_arguments_first(toys, adapter_cases):
    config, nc_det, nc_seg = adapter_cases["generic_anchor_free"]
    cfg = {**config, "det_names": ["p", "q", "r"], "seg_names": ["s0", "s1", "s2", "s3"]}
    from_config = _protocol("generic").from_config
    assert from_config(cfg, nc_det, nc_seg).det_names == ["p", "q", "r"]
    built = from_config(cfg, nc_det, nc_seg, ["a", "b", "c"], None)
    assert built.det_names == ["a", "b", "c"] and built.seg_names == ["s0", "s1", "s2", "s3"]
    no_names = {k: v for k, v in cfg.items() if not k.endswith("_names")}
    assert from_config(no_names, nc_det, nc_seg).det_names == ["class0", "class1", "class2"]  # placeholders


def test_composite_passes_trust_code_and_where_to_its_members(toys, adapter_cases):
    (yolop, nc_det, _), (anchor_free, _, nc_seg) = (
        adapter_cases["generic_yolop_anchor"],
        adapter_cases["generic_anchor_free"],
    )
    det = {**yolop, "outputs": {"det": 0}, "freeze": ["drive", "lane"]}
    seg = {**anchor_free, "outputs": {"seg": "seg"}}
    model = build_model({"adapter": "composite", "det": det, "seg": seg}, nc_det=nc_det, nc_seg=nc_seg)
    arch = model.arch()
    with pytest.raises(CheckpointError, match=rf"^victim.pt: .*would import and call '{YOLOP}'"):
        _protocol("composite").from_arch(arch, where="victim.pt")
    with pytest.raises(CheckpointError, match=rf"^victim.pt: .*would import and call '{ANCHOR_FREE}'"):
        _protocol("composite").from_arch(arch, trust_code=[YOLOP], where="victim.pt")
    assert _protocol("composite").from_arch(arch, trust_code=[YOLOP, ANCHOR_FREE]).arch() == arch


def test_base_class_without_hooks_cannot_be_built():
    class Bare(MultiTaskAdapter):
        config_keys = ("adapter",)

    with pytest.raises(NotImplementedError, match="Bare cannot be built from a config"):
        Bare.from_config({"adapter": "bare"})
    with pytest.raises(NotImplementedError, match="Bare cannot be rebuilt"):
        Bare.from_arch({"adapter": "bare"})
