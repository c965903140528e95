"""Several segmentation tasks in one model (issue 13, models part): ``MultiTaskOutput.seg_tasks``, the built-in
family with one seg head per task, safe round trips, the per-task compatibility check, and single-task models that
stay byte-identical (arch and state_dict keys), so old checkpoints load."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from mtkd.checkpoint import checkpoint_dict, load_checkpoint, model_names, save_model
from mtkd.errors import CompatibilityError, ConfigError
from mtkd.models import MultiTaskOutput, build_from_arch, build_model, check_compatible, load_model
from mtkd.models.adapters.native import ARCH_KEYS
from mtkd.models.flat import flatten_output
from mtkd.models.heads import SegHead
from mtkd.models.yolo_mt import YoloMT, prune_ignored_layers, prune_output_transform

DET = ["car", "person"]
TASKS = {"drivable": ["background", "drivable"], "lane": ["background", "lane", "curb"]}
SIZE = 64


def two_task(head: str = "anchor", tasks=None, **kw) -> YoloMT:
    torch.manual_seed(0)
    return build_model("yolo_mt_n", head=head, det_names=DET, seg_tasks=tasks or TASKS, **kw)


# ------------------------------------------------------------------------------------------ MultiTaskOutput
def test_output_reads_every_seg_task_the_same_way():
    a, b, s = torch.zeros(1, 2, 4, 4), torch.ones(1, 3, 4, 4), torch.full((1, 5, 4, 4), 2.0)
    multi = MultiTaskOutput(seg_tasks={"drivable": a, "lane": b})
    assert multi.seg is None and multi.multi_seg and list(multi.seg_outputs) == ["drivable", "lane"]
    assert multi["lane"] is b and multi.get("drivable") is a and multi.get("nope") is None
    assert list(multi) == ["drivable", "lane"] and len(multi) == 2 and multi["seg"] is None
    single = MultiTaskOutput(seg=s)
    assert single.seg_outputs == {"seg": s} and not single.multi_seg and single.seg_tasks == {}
    assert list(single) == ["seg"] and MultiTaskOutput().seg_outputs == {}
    assert MultiTaskOutput.from_seg_outputs({"seg": s}).seg is s
    assert MultiTaskOutput.from_seg_outputs({"lane": b}).seg_tasks == {"lane": b}
    with pytest.raises(ValueError, match="either seg .* or seg_tasks"):
        MultiTaskOutput(seg=s, seg_tasks={"lane": b})
    with pytest.raises(ValueError, match="may not name a task 'det'"):
        MultiTaskOutput(seg_tasks={"det": b})


# ------------------------------------------------------------------------------------------ built-in family
@pytest.mark.parametrize("head", ["anchor", "anchor_free"])
def test_two_task_model_has_one_head_per_task(head):
    model = two_task(head)
    assert model.seg_tasks == TASKS and model.multi_seg and model.nc_det == 2
    assert model.feature_names() == ["b3", "b4", "b5", "p3", "p4", "p5", "seg_drivable", "seg_lane"]
    model.train()
    out = model(torch.rand(2, 3, SIZE, SIZE), features=model.feature_names())
    assert out.seg is None and list(out.seg_tasks) == ["drivable", "lane"]
    assert out["drivable"].shape == (2, 2, SIZE, SIZE) and out["lane"].shape == (2, 3, SIZE, SIZE)
    assert (
        out.det.kind == head and out.det.num_classes == 2 and set(out.features) == set(model.feature_names())
    )
    loss = sum(torch.nn.functional.cross_entropy(out[t], torch.randint(0, len(n), (2, SIZE, SIZE)))
               for t, n in model.seg_tasks.items()) + out.det.cls.mean() + out.det.box.mean()  # fmt: skip
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), (
        "every head gets a gradient"
    )
    keys = [k for k in model.state_dict() if k.startswith("seg.")]
    assert {k.split(".")[1] for k in keys} == {"drivable", "lane"}
    single = build_model("yolo_mt_n", nc_det=2, nc_seg=2, head=head)
    assert (
        len(prune_ignored_layers(model)) == len(prune_ignored_layers(single)) + 1
    )  # one classifier per task
    assert len(prune_output_transform(out)) == 2 + (3 if head == "anchor" else 2)
    assert list(flatten_output(out))[:2] == ["seg_drivable", "seg_lane"]


def test_single_task_model_is_unchanged():
    """seg_names and seg_tasks={"seg": names} build the same single-task model, with today's arch and keys."""
    a = build_model("yolo_mt_n", det_names=DET, seg_names=["bg", "road"])
    b = build_model("yolo_mt_n", det_names=DET, seg_tasks={"seg": ["bg", "road"]})
    assert a.arch() == b.arch() and list(a.state_dict()) == list(b.state_dict())
    assert a.seg_tasks == {"seg": ["bg", "road"]} and not a.multi_seg and a.nc_seg == 2
    assert list(a.arch()) == [k for k in ARCH_KEYS if k != "seg_tasks"] and isinstance(a.seg, SegHead)
    out = a(torch.rand(1, 3, SIZE, SIZE))
    assert out.seg_tasks == {} and out.seg_outputs == {"seg": out.seg} and set(out) == {"seg", "det"}


@pytest.mark.parametrize(
    ("head", "arch_sha", "keys_sha"),
    [
        ("anchor", "f60461527002791c", "a3b271cc7ccdb105"),
        ("anchor_free", "aa8cd4021eb433a0", "e61b3f6d4015b3a7"),
    ],
)
def test_single_task_arch_and_state_keys_are_byte_identical_to_before(head, arch_sha, keys_sha):
    """Hashes of ``json.dumps(arch)`` and of the state_dict (key, shape) list, taken before seg_tasks existed."""
    m = build_model("yolo_mt_n", head=head, det_names=["a", "b"], seg_names=["bg", "x", "y"])
    keys = json.dumps([(k, list(v.shape)) for k, v in m.state_dict().items()])
    assert hashlib.sha256(json.dumps(m.arch()).encode()).hexdigest()[:16] == arch_sha
    assert hashlib.sha256(keys.encode()).hexdigest()[:16] == keys_sha


def test_multi_task_model_refuses_single_task_accessors():
    model = two_task()
    for attr in ("seg_names", "nc_seg"):
        with pytest.raises(
            ConfigError, match=r"segmentation tasks drivable, lane; .*single 'seg_names' task"
        ):
            getattr(model, attr)


@pytest.mark.parametrize("head", ["anchor", "anchor_free"])
def test_two_task_model_round_trips_through_a_safe_checkpoint(head, tmp_path):
    model = two_task(head).eval()
    path = save_model(tmp_path / "two.pt", model)
    raw = torch.load(path, weights_only=True)
    assert raw["names"] == {"det": DET, "seg_tasks": TASKS}
    arch = raw["model"]["arch"]
    assert json.loads(json.dumps(arch)) == arch and arch["seg_tasks"] == TASKS and "seg_names" not in arch
    assert set(arch["layers"]["seg"]) == {"drivable", "lane"}
    torch.manual_seed(1)  # the rebuilt model's init differs: the loaded weights must win
    loaded = load_model(path).eval()
    assert list(loaded.state_dict()) == list(model.state_dict()) and loaded.arch() == model.arch()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for task in TASKS:
        assert torch.equal(a[task], b[task])
    assert torch.equal(a.det.cls, b.det.cls) and load_checkpoint(path)["names"]["seg_tasks"] == TASKS


def test_pruned_two_task_model_rebuilds_from_its_arch():
    """Torch-Pruning keeps every task's classifier; pruned per-task head widths travel in the arch."""
    import torch_pruning as tp

    model = two_task()
    example = torch.rand(1, 3, SIZE, SIZE)
    n0 = sum(p.numel() for p in model.parameters())
    tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
        ignored_layers=prune_ignored_layers(model), output_transform=prune_output_transform,
    ).step()  # fmt: skip
    assert sum(p.numel() for p in model.parameters()) < 0.6 * n0
    rebuilt = build_from_arch(model.arch())
    rebuilt.load_state_dict(model.state_dict())
    out = rebuilt.eval()(example)
    assert out["drivable"].shape[1] == 2 and out["lane"].shape[1] == 3


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.update(seg_names=["bg"]), r"exactly one of 'seg_names' .* or 'seg_tasks'"),
        (lambda a: a.pop("seg_tasks"), r"exactly one of 'seg_names'"),
        (lambda a: a.update(seg_tasks={"Lane": ["bg"]}), r"field 'seg_tasks.Lane': a task name is lower-case"),
        (lambda a: a.update(seg_tasks={"det": ["bg"], "lane": ["x"]}), r"'seg_tasks.det': 'det' is reserved"),
        (lambda a: a.update(seg_tasks={"lane": "bg"}), r"'seg_tasks.lane' = 'bg'; expected a non-empty list"),
        (lambda a: a.update(seg_tasks={"lane": ["bg", "bg"]}), r"expected unique, non-empty class names"),
        (lambda a: a["layers"]["seg"].pop("lane") and a["layers"]["seg"].update(road={}),
         r"'layers.seg' must map each of the seg tasks \['drivable', 'lane'\]"),
    ],
)  # fmt: skip
def test_malformed_multi_task_arch_is_refused_naming_the_field(change, match):
    arch = json.loads(json.dumps(two_task().arch()))
    change(arch)
    with pytest.raises(ConfigError, match=match):
        build_from_arch(arch)


def test_build_model_seg_task_errors():
    with pytest.raises(ConfigError, match=r"give nc_seg/seg_names \(one seg task\) or seg_tasks"):
        build_model("yolo_mt_n", det_names=DET, seg_names=["a"], seg_tasks=TASKS)
    with pytest.raises(
        ConfigError, match=r"seg task name 'keys' clashes with a torch.nn.ModuleDict attribute"
    ):
        build_model("yolo_mt_n", det_names=DET, seg_tasks={"drivable": ["bg", "d"], "keys": ["bg", "k"]})
    with pytest.raises(
        ConfigError, match=r"smp adapter: several segmentation tasks \(drivable, lane\) are not "
    ):
        build_model(
            {"adapter": "smp", "arch": "Unet", "encoder_name": "tu-resnet10t"}, nc_det=0, seg_tasks=TASKS
        )


def test_model_pickled_before_seg_tasks_still_unpickles():
    """A module pickled by an older mtkd (``seg_names`` a plain attribute) gets its seg task back."""
    model = build_model("yolo_mt_n", det_names=DET, seg_names=["bg", "road"])
    state = dict(model.__dict__)
    del state["_seg_tasks"]
    state["seg_names"] = ["bg", "road"]
    old = YoloMT.__new__(YoloMT)
    old.__setstate__(state)
    assert old.seg_tasks == {"seg": ["bg", "road"]} and old.seg_names == ["bg", "road"] and old.nc_seg == 2


# ------------------------------------------------------------------------------------------ names + compat
def test_checkpoint_names_carry_the_tasks():
    assert model_names(two_task()) == {"det": DET, "seg_tasks": TASKS}
    single = build_model("yolo_mt_n", det_names=DET, seg_names=["bg", "road"])
    assert model_names(single) == {"det": DET, "seg": ["bg", "road"]}

    class SegTask:  # what a DataSpec's seg_tasks hold
        def __init__(self, names):
            self.names = names

    ckpt = checkpoint_dict(single, names={"det": DET, "seg_tasks": {"seg": SegTask(["bg", "road"])}})
    assert ckpt["names"] == {"det": DET, "seg": ["bg", "road"]}  # a single task keeps today's layout
    ckpt = checkpoint_dict(single, names={"det": DET, "seg_tasks": {t: SegTask(n) for t, n in TASKS.items()}})
    assert ckpt["names"] == {"det": DET, "seg_tasks": TASKS}


def test_compatibility_is_checked_per_task():
    check_compatible(two_task(), build_model("yolo_mt_s", det_names=DET, seg_tasks=TASKS))
    reordered = {"lane": TASKS["lane"], "drivable": TASKS["drivable"]}
    check_compatible(two_task(), two_task(tasks=reordered))  # outputs are read by name, not position
    cases = [
        ({"drivable": TASKS["drivable"]}, ["seg tasks", "['drivable', 'lane']", "['drivable']"]),
        ({**TASKS, "lane": ["background", "lane"]}, ["seg task 'lane' classes", "3", "2"]),
        ({**TASKS, "lane": ["background", "curb", "lane"]}, ["seg task 'lane' class names", "curb"]),
    ]
    for tasks, words in cases:
        with pytest.raises(CompatibilityError) as e:
            check_compatible(two_task(), two_task(tasks=tasks))
        assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(
        CompatibilityError, match=r"seg tasks: teacher \['drivable', 'lane'\] vs student \['seg'\]"
    ):
        check_compatible(two_task(), build_model("yolo_mt_n", det_names=DET, seg_names=["bg", "x"]))
