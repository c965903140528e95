"""Several seg tasks through every adapter (issue 13): a contract test parametrized over the adapters that support
them (native, generic, composite) and a one-line refusal from the others; the YOLOP-like toy (two sigmoid seg heads
+ an anchor det head) through the generic adapter; per-output activations; composite members per task; round trips
through safe checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtkd.checkpoint import save_model
from mtkd.errors import ConfigError
from mtkd.models.build import ADAPTERS, build_model, load_model

B, IMGSZ = 2, 64
YOLOP = "mtkd_adapter_toys:YoloPLike"
ANCHOR_FREE = "mtkd_adapter_toys:AnchorFreeToy"
TASKS = {"drivable": ["background", "drivable"], "lane": ["background", "lane"]}  # the conftest's multi_tasks


def _targets(arch) -> list[str]:
    """Every generic ``target`` an arch names (what load_model must be allowed to import)."""
    if isinstance(arch, dict):
        found = [arch["target"]] if isinstance(arch.get("target"), str) else []
        return found + [t for v in arch.values() for t in _targets(v)]
    return []


def test_every_adapter_is_covered(multi_cases, multi_tasks, unsupported_multi_adapters):
    covered = {config["adapter"] for config, _ in multi_cases.values()} | set(unsupported_multi_adapters)
    assert covered == set(ADAPTERS) and multi_tasks == TASKS


def test_multi_task_contract(multi_case, build_multi_case, tmp_path):
    model = build_multi_case(multi_case)
    assert model.seg_tasks == TASKS and model.multi_seg and model.det_spec() is not None
    images = torch.rand(B, 3, IMGSZ, IMGSZ)
    model.eval()
    with torch.no_grad():
        ref = model(images)
    model.train()
    feats = model.feature_names()
    for out in (ref, model(images, features=feats)):
        assert out.seg is None and list(out.seg_tasks) == list(TASKS) and list(out.seg_outputs) == list(TASKS)
        for task, names in TASKS.items():
            logits = out[task]
            assert logits.shape == (B, len(names), IMGSZ, IMGSZ) and logits.dtype == torch.float32
            assert torch.isfinite(logits).all()
        assert out.det.num_classes == model.nc_det and out.det.box.shape[:2] == out.det.cls.shape[:2]
    assert set(out.features) == set(feats)
    loss = sum(F.cross_entropy(out[t], torch.randint(0, len(n), (B, IMGSZ, IMGSZ))) for t, n in TASKS.items())
    loss = loss + out.det.box.square().mean() + out.det.cls.sigmoid().mean()
    loss = loss + sum((f.float().square().mean() for f in out.features.values()), torch.zeros(()))
    if out.det.obj is not None:
        loss = loss + out.det.obj.sigmoid().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    path = save_model(tmp_path / "m.pt", model)
    assert torch.load(path, weights_only=True)["names"]["seg_tasks"] == TASKS
    torch.manual_seed(123)
    loaded = load_model(path, trust_code=_targets(model.arch())).eval()
    assert loaded.arch() == model.arch() and loaded.seg_tasks == TASKS
    with torch.no_grad():
        again, ref = loaded(images), model.eval()(images)  # (train mode moved the BN statistics)
    for task in TASKS:
        torch.testing.assert_close(again[task], ref[task])
    torch.testing.assert_close(again.det.cls, ref.det.cls)


def test_adapters_without_multi_task_support_refuse_it(unsupported_multi):
    adapter, config = unsupported_multi
    with pytest.raises(
        ConfigError, match=rf"^{adapter} adapter: several segmentation tasks \(drivable, lane\) are not"
    ):
        build_model(config, nc_det=0, seg_tasks=TASKS)


# ------------------------------------------------------------------------------------------ generic: YOLOP-like
def _yolop(**over):
    return {
        "adapter": "generic", "target": YOLOP, "kwargs": {"nc": 3}, "head": "anchor", "strides": [8, 16, 32],
        "anchors": [[3, 9, 5, 11, 4, 20], [7, 18, 6, 39, 12, 31], [19, 50, 38, 81, 68, 157]],
        "outputs": {"det": 0, "drivable": {"index": 1, "activation": "sigmoid"},
                    "lane": {"index": 2, "activation": "sigmoid"}},
        "eval_outputs": {"det": [0, 1]},  # YOLOP's Detect returns (decoded, raw) in eval mode
        "features": {"p3": "backbone.stem"},
        **over,
    }  # fmt: skip


def test_yolop_like_toy_gives_both_tasks_logits(toys):
    """YOLOP's seg heads end in a sigmoid (hustvl/YOLOP #117/#141: applying it again is wrong): the adapter turns
    each head's probabilities back into logits, log(p) - log(1 - p), clamped, so softmax/KL see logits."""
    model = build_model(_yolop(), det_names=["car", "person", "bus"], seg_tasks=TASKS)
    net = model.model
    x = torch.rand(B, 3, IMGSZ, IMGSZ)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            out = model(x)
            det, drive, lane = net(x)
        for task, p in (("drivable", drive), ("lane", lane)):
            q = p.clamp(1e-6, 1 - 1e-6)
            torch.testing.assert_close(out[task], q.log() - (1 - q).log(), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(torch.sigmoid(out[task]), p, atol=1e-6, rtol=1e-5)
        levels = det if train else det[1]
        assert all(torch.equal(a, b) for a, b in zip(out.det.raw, levels))
    with torch.no_grad():  # saturated probabilities stay finite
        net.lane[0].bias.fill_(1e4)
        assert torch.isfinite(model(x)["lane"]).all()


def test_per_output_softmax_and_default_activation(toys):
    cfg = {"adapter": "generic", "target": ANCHOR_FREE, "kwargs": {"nc": 1, "nc_seg": 2, "reg_max": 4},
           "head": "anchor_free", "strides": [8, 16, 32], "reg_max": 4, "seg_activation": "logits",
           "outputs": {"det": "det", "lane": {"index": "seg", "activation": "softmax"}}}  # fmt: skip
    model = build_model(cfg, nc_det=1, seg_tasks={"lane": ["bg", "lane"]})
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        out, p = model(x), model.model(x)["seg"]
    expected = F.interpolate(
        p.clamp_min(1e-6).log(), size=(IMGSZ, IMGSZ), mode="bilinear", align_corners=False
    )
    assert list(out.seg_tasks) == ["lane"] and model.seg_tasks == {"lane": ["bg", "lane"]}
    torch.testing.assert_close(out["lane"], expected)  # log p, then upsampled to the input size
    plain = build_model(
        {**cfg, "outputs": {"det": "det", "lane": "seg"}}, nc_det=1, seg_tasks={"lane": ["bg", "l"]}
    )
    assert plain.eval()(x)["lane"].shape == (1, 2, IMGSZ, IMGSZ)  # a plain path uses seg_activation (logits)


def test_unmapped_tasks_are_left_out_and_config_seg_tasks_work(toys, adapter_cases):
    model = build_model(_yolop(outputs={"det": 0, "lane": {"index": 2, "activation": "sigmoid"}}), nc_det=3,
                        seg_tasks=TASKS)  # fmt: skip
    assert model.seg_tasks == {"lane": TASKS["lane"]} and list(model(torch.rand(1, 3, IMGSZ, IMGSZ))) == [
        "lane",
        "det",
    ]
    from mtkd.models.adapters.generic import GenericAdapter

    built = GenericAdapter.from_config({**_yolop(), "seg_tasks": TASKS}, 3)  # names from the config itself
    assert built.seg_tasks == TASKS and built.arch()["seg_tasks"] == TASKS and "seg_names" not in built.arch()
    with pytest.raises(
        ConfigError, match=r"^generic adapter: give field 'seg_names' or field 'seg_tasks', not both"
    ):
        GenericAdapter.from_config({**_yolop(), "seg_tasks": TASKS, "seg_names": ["bg", "x"]}, 3)


@pytest.mark.parametrize(
    ("over", "tasks", "match"),
    [
        ({"outputs": {"det": 0, "seg": 1}}, TASKS,
         r"field 'outputs' has unknown output 'seg'; expected det, drivable, lane \(with several seg tasks each"),
        ({"outputs": {"det": 0, "lnae": 2}}, TASKS, r"unknown output 'lnae' \(did you mean 'lane'\?\)"),
        ({"outputs": {"det": 0, "drivable": 1}}, None, r"unknown output 'drivable'.*need seg_tasks"),
        ({"outputs": {"lane": {"index": 2, "activaton": "sigmoid"}}}, TASKS,
         r"field 'outputs.lane': unknown field 'activaton' \(did you mean 'activation'\?\)"),
        ({"outputs": {"lane": {"index": 2, "activation": "sigmod"}}}, TASKS,
         r"field 'outputs.lane.activation' = 'sigmod'; expected one of .*\(did you mean 'sigmoid'\?\)"),
        ({"outputs": {"lane": {"activation": "sigmoid"}}}, TASKS, r"field 'outputs.lane.index' is required"),
        ({"outputs": {"det": {"index": 0}}}, TASKS, r"field 'outputs.det' = .*det takes a path"),
        ({"outputs": {"lane": 2.5}}, TASKS, r"field 'outputs.lane' = 2.5; expected an index, a key or a list"),
        ({"eval_outputs": {"lane": 2, "det": [0, 1], "road": 1}}, TASKS,
         r"field 'eval_outputs' has unknown output 'road'"),
    ],
)  # fmt: skip
def test_generic_multi_task_config_errors_name_the_field(toys, over, tasks, match):
    kw = {"seg_tasks": tasks} if tasks else {"nc_seg": 2}
    with pytest.raises(ConfigError, match=match):
        build_model(_yolop(**over), nc_det=3, **kw)


def test_generic_channel_mismatch_names_the_task(toys):
    model = build_model(_yolop(), nc_det=3, seg_tasks={**TASKS, "lane": ["bg", "lane", "curb"]})
    with pytest.raises(ConfigError, match=r"'lane' output has 2 channels but seg_tasks.lane has 3 classes"):
        model(torch.rand(1, 3, IMGSZ, IMGSZ))


# ------------------------------------------------------------------------------------------ composite
def test_composite_members_per_task_are_named_by_task(build_multi_case):
    model = build_multi_case("composite_one_member_per_task")
    assert {k.split(".")[0] for k in model.state_dict()} == {"det", "seg"}
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("seg.")} == {"drivable", "lane"}
    assert "seg.drivable.p3" in model.feature_names() and "seg.lane.p3" not in model.feature_names()
    arch = model.arch()
    assert set(arch["seg"]) == {"drivable", "lane"} and arch["seg"]["lane"]["seg_names"] == TASKS["lane"]
    out = model(
        torch.rand(1, 3, IMGSZ, IMGSZ), features=["det.p4", "seg.drivable.p3", "seg.lane.backbone.p4"]
    )
    assert set(out.features) == {"det.p4", "seg.drivable.p3", "seg.lane.backbone.p4"}
    with pytest.raises(
        ConfigError, match=r"prefix the member's name with 'det.' or 'seg.drivable.' or 'seg.lane.'"
    ):
        model(torch.rand(1, 3, IMGSZ, IMGSZ), features=["seg.p3"])


def test_composite_config_errors(toys, multi_cases):
    config, _ = multi_cases["composite_one_member_per_task"]
    typo = {**config, "seg": {"drivable": config["seg"]["drivable"], "lnae": config["seg"]["lane"]}}
    with pytest.raises(ConfigError, match=r"field 'seg.lnae': unknown seg task \(did you mean 'lane'\?\)"):
        build_model(typo, nc_det=3, seg_tasks=TASKS)
    with pytest.raises(
        ConfigError, match=r"field 'seg' has one member per seg task \(drivable, lane\), so the model"
    ):
        build_model(config, nc_det=3, seg_names=["bg", "x"])
    with pytest.raises(
        ConfigError, match=r"field 'seg.lane' must be a model config dict with an 'adapter' key"
    ):
        build_model({**config, "seg": {**config["seg"], "lane": {"arch": "Unet"}}}, nc_det=3, seg_tasks=TASKS)
