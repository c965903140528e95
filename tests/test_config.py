"""Strict typed config: overrides, nesting, inheritance, did-you-mean, ranges, round trip, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtkd.config import TrainConfig, load_config, parse_overrides, save_config
from mtkd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_flat_overrides():
    cfg = load_config(
        None,
        ["epochs=3", "batch=8", "teacher=t.pt", "alpha_seg=0.25", "device=cuda:1", "amp=bf16", "resume=true"],
    )
    assert (cfg.epochs, cfg.batch, cfg.teacher, cfg.alpha_seg, cfg.device) == (3, 8, "t.pt", 0.25, "cuda:1")
    assert cfg.distilling and cfg.resume is True
    assert not load_config(None, []).distilling  # distillation is on iff a teacher is set
    assert load_config(None, ["resume=runs/x/weights/last.pt"]).resume == "runs/x/weights/last.pt"
    assert load_config(None, ["teacher=null"]).teacher is None


def test_nested_keys_aliases_and_schedules():
    cfg = load_config(
        None,
        [
            "optim.lr=0.02",
            "weight_decay=0.001",
            "distill.feat_kd.names=[p3, p4]",
            "distill.feat_kd.weight=0.5",
            "temperature={kind: linear, start: 4, end: 1}",
        ],
    )
    assert cfg.optim.lr == 0.02 and cfg.optim.weight_decay == 0.001  # flat `weight_decay` -> optim section
    assert cfg.distill.feat_kd.names == ("p3", "p4") and cfg.distill.feat_kd.weight == 0.5
    assert cfg.temperature == {"kind": "linear", "start": 4.0, "end": 1.0}
    assert parse_overrides(["a.b.c=1", "d=[x, y]"]) == {"a": {"b": {"c": 1}}, "d": ["x", "y"]}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=3", "unknown config key 'epoch' (did you mean 'epochs'?)"),
        ("tempreature=2", "did you mean 'temperature'?"),
        ("distill.feat_kd.wieght=1", "did you mean 'distill.feat_kd.weight'?"),
        (
            "optim.optimizer=adam",
            "optim.optimizer: 'adam' is not one of ['adamw', 'sgd'] (did you mean 'adamw'?)",
        ),
    ],
)
def test_unknown_keys_suggest(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("imgsz=100", "imgsz: 100 must be a multiple of 32"),
        ("alpha_seg=1.5", "alpha_seg: 1.5 is outside the allowed range [0.0, 1.0]"),
        ("temperature=0", "temperature: 0.0 is outside the allowed range (0.0, inf)"),
        ("epochs=0", "epochs: 0 is outside the allowed range [1, 100000]"),
        ("batch=abc", "batch: expected int, got str 'abc' (allowed: [1, 65536])"),
        ("lr=-1", "optim.lr: -1.0 is outside the allowed range (0.0, 10.0]"),
        ("head=anchorfree", "head: 'anchorfree' is not one of ['anchor', 'anchor_free']"),
        ("device=gpu", "device: 'gpu' expected 'cpu', 'cuda' or 'cuda:N'"),
        ("amp=fp16", "amp: 'fp16' needs a CUDA device"),
        ("alpha_det={kind: linear, start: 0.5, end: 2}", "alpha_det: schedule 0.5 -> 2.0 is outside"),
        ("aug={hflp: 0.5}", "did you mean 'aug.hflip'?"),
        ("epochs", "expected key=value"),
    ],
)
def test_bad_values_name_key_and_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_base_inheritance_and_round_trip(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 7\noptim:\n  lr: 0.01\n  optimizer: sgd\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nbatch: 4\noptim:\n  lr: 0.05\n")
    cfg = load_config(tmp_path / "child.yaml", ["epochs=9"])
    assert (cfg.epochs, cfg.batch, cfg.optim.lr, cfg.optim.optimizer) == (9, 4, 0.05, "sgd")
    again = load_config(save_config(cfg, tmp_path / "saved.yaml"))
    assert again == cfg and isinstance(again, TrainConfig)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "name", ["shapes_teacher", "shapes_student", "shapes_distill", "examples/yolop_pruned_student"]
)
def test_shipped_configs_load_with_overrides(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", ["data=other.yaml", "model=yolo_mt_s"])
    assert cfg.data == "other.yaml" and cfg.model == "yolo_mt_s"
    assert cfg.distilling == (name in ("shapes_distill", "examples/yolop_pruned_student"))


@pytest.mark.parametrize("word", ["off", "OFF", "no", "on", "yes", "Off"])
def test_yaml_11_words_stay_strings_in_overrides_and_files(word, tmp_path):
    """PyYAML reads `off`/`no`/`on`/`yes` as booleans (YAML 1.1); string fields must get the word the user typed."""
    assert load_config(None, [f"name={word}"]).name == word
    path = tmp_path / "c.yaml"
    path.write_text(f"name: {word}\namp: off\n")
    cfg = load_config(path, [])
    assert cfg.name == word and cfg.amp == "off"
    assert load_config(None, ["amp=off"]).amp == "off"


def test_bool_fields_accept_yaml_11_words_and_refuse_others():
    cfg = load_config(None, ["exist_ok=yes", "ema=off", "augment=On"])
    assert (cfg.exist_ok, cfg.ema, cfg.augment) == (True, False, True)
    with pytest.raises(ConfigError, match="exist_ok: expected bool"):
        load_config(None, ["exist_ok=maybe"])


def test_a_bad_key_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("epochs: 3\nepoch: 4\n")
    with pytest.raises(
        ConfigError, match=rf"^{path}: unknown config key 'epoch' \(did you mean 'epochs'\?\)"
    ):
        load_config(path, [])
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 3\n")
    with pytest.raises(ConfigError) as e:  # a bad override is not blamed on the file
        load_config(good, ["epoch=4"])
    assert str(good) not in str(e.value) and "epoch" in str(e.value)


def test_trust_code_takes_a_list_of_import_paths_or_a_bool():
    assert load_config(None, []).trust_code is False
    assert load_config(None, ["trust_code=[yolop.models:YOLOP]"]).trust_code == ("yolop.models:YOLOP",)
    assert load_config(None, ["trust_code=true"]).trust_code is True


def test_amp_off_trains(tmp_path):
    """`amp=off`, the value README, --help and the fp16 error tell users to type, trains."""
    from mtkd.cli import run_command
    from mtkd.data.shapes import make_shapes

    data = make_shapes(tmp_path / "data", n_train=2, n_val=2, size=64, seed=0)
    rc = run_command(
        "train",
        [
            str(ROOT / "configs" / "shapes_student.yaml"),
            f"data={data}",
            "amp=off",
            "imgsz=64",
            "epochs=1",
            "batch=2",
            "workers=0",
            "tensorboard=false",
            f"project={tmp_path}",
            "name=amp_off",
        ],
    )
    assert rc == 0 and (tmp_path / "amp_off" / "weights" / "last.pt").is_file()


# ---------------------------------------------------------------- the distillation schema (validated here only)
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("alpha_seg=1.5", "alpha_seg: 1.5 is outside the allowed range [0.0, 1.0]"),
        (
            "alpha_det={kind: linear, start: 0, end: 2}",
            "alpha_det: schedule 0.0 -> 2.0 is outside the allowed range",
        ),
        ("ratio_det=-1", "ratio_det: -1.0 is outside the allowed range [0.0, inf)"),
        ("ratio_seg=-1", "ratio_seg: -1.0 is outside the allowed range [0.0, inf)"),
        ("temperature=0", "temperature: 0.0 is outside the allowed range (0.0, inf)"),
        ("temperature={kind: cosine, start: 0, end: 4}", "temperature: schedule 0.0 -> 4.0 is outside"),
        ("temperature={kind: linaer, start: 1, end: 4}", "did you mean 'linear'?"),
        ("alpha_sge=0.5", "unknown config key 'alpha_sge' (did you mean 'alpha_seg'?)"),
        (
            "distill.seg_kd=kll",
            "distill.seg_kd: 'kll' is not one of ['kl', 'cwd', 'dist'] (did you mean 'kl'?)",
        ),
        (
            "distill.seg_kd_options={beta: 2}",
            "distill.seg_kd_options: 'beta' is not an option of kind 'kl'; its options: none",
        ),
        (
            "distill={seg_kd: dist, seg_kd_options: {gama: 1}}",
            "'gama' is not an option of kind 'dist' (did you mean 'gamma'?); its options: beta, gamma, tau",
        ),
        (
            "distill={seg_kd: dist, seg_kd_options: {tau: 0}}",
            "distill.seg_kd_options.tau: 0.0 is outside the allowed range (0.0, inf)",
        ),
        (
            "distill={seg_kd: dist, seg_kd_options: {beta: -1}}",
            "distill.seg_kd_options.beta: -1.0 is outside the allowed range [0.0, inf)",
        ),
        (
            "distill.off_last_epochs=-1",
            "distill.off_last_epochs: -1 is outside the allowed range [0, 100000]",
        ),
        ("distill.off_last_epochs=1.5", "distill.off_last_epochs: expected int"),
        (
            "distill.feat_kd={kind: mgd, options: {mask_ratio: 1}}",
            "distill.feat_kd.options.mask_ratio: 1.0 is outside the allowed range [0.0, 1.0)",
        ),
        (
            "distill.det_kd.wieght=1",
            "unknown config key 'distill.det_kd.wieght' (did you mean 'distill.det_kd.weight'?)",
        ),
        ("distill.det_kd.ld=maybe", "distill.det_kd.ld: expected bool, got str 'maybe'"),
        ("distill.det_kd.weight=-1", "distill.det_kd.weight: -1.0 is outside the allowed range [0.0, inf)"),
        (
            "distill.det_kd.temperature=0",
            "distill.det_kd.temperature: 0.0 is outside the allowed range (0.0, inf)",
        ),
        ("distill.feat_kd.knd=at", "did you mean 'distill.feat_kd.kind'?"),
        (
            "distill.feat_kd.kind=fitnte",
            "distill.feat_kd.kind: 'fitnte' is not one of ['fitnet', 'at', 'sp', 'cc', "
            "'cwd', 'pkd', 'score_l2', 'mgd'] (did you mean 'fitnet'?)",
        ),
        ("distill.feat_kd.weight=-2", "distill.feat_kd.weight: -2.0 is outside the allowed range [0.0, inf)"),
        (
            "distill.feat_kd.names=[p3, p3]",
            "distill.feat_kd.names: duplicate feature names (dots count as '_')",
        ),
        (
            "distill.feat_kd={kind: at, options: {gamma: 0.1}}",
            "distill.feat_kd.options: 'gamma' is not an option of kind 'at'; its options: p",
        ),
        (
            "distill.feat_kd={kind: cc, options: {gama: 0.1}}",
            "'gama' is not an option of kind 'cc' (did you mean 'gamma'?); its options: kernel, gamma, order",
        ),
        (
            "distill.feat_kd={kind: fitnet, options: {p: 2}}",
            "'p' is not an option of kind 'fitnet'; its options: none",
        ),
        (
            "distill.feat_kd={kind: cc, options: {kernel: box}}",
            "distill.feat_kd.options.kernel: 'box' is not one of ['gaussian', 'bilinear']",
        ),
        ("distill.feat_kd={kind: cc, options: {order: 1.5}}", "distill.feat_kd.options.order: expected int"),
        (
            "distill.feat_kd={kind: cwd, options: {temperature: 0}}",
            "distill.feat_kd.options.temperature: 0.0 is outside the allowed range (0.0, inf)",
        ),
        ("distill.feat_kd={kind: at, options: {p: -1}}", "distill.feat_kd.options.p: -1.0 is outside"),
        ("distill=[0.5]", "distill: expected a mapping, got list [0.5]"),
    ],
)
def test_distill_keys_name_the_key_and_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["teacher=t.pt", override])
    assert message in str(e.value)


def test_off_last_epochs_must_leave_distillation_epochs_and_binds_only_with_a_teacher():
    with pytest.raises(ConfigError, match=r"^distill.off_last_epochs: 5 must be < epochs \(5\), else"):
        load_config(None, ["teacher=t.pt", "epochs=5", "distill.off_last_epochs=5"])
    plain = load_config(None, ["epochs=5", "distill.off_last_epochs=5"])  # no teacher: nothing to switch off
    assert plain.distill.off_last_epochs == 5
    cfg = load_config(None, ["teacher=t.pt", "epochs=5", "off_last_epochs=2"])  # flat alias of the key
    assert cfg.distill.off_last_epochs == 2 and cfg.to_dict()["distill"]["off_last_epochs"] == 2


def test_seg_kd_options_are_typed_and_fit_seg_dist():
    """The DIST options the schema accepts are the keyword options of ``seg_dist`` (its defaults are the only
    ones); a valid section reaches ``DistillLoss``."""
    import inspect

    from mtkd.config import SEG_KD_OPTIONS
    from mtkd.losses import DistillLoss, seg_dist

    params = [n for n, p in inspect.signature(seg_dist).parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert sorted(SEG_KD_OPTIONS["dist"]) == sorted(set(params) - {"ignore_mask"})
    cfg = load_config(None, ["teacher=t.pt", "distill={seg_kd: dist, seg_kd_options: {beta: 2, tau: 1}}"])
    assert cfg.distill.seg_kd_options == {"beta": 2.0, "tau": 1.0}
    assert isinstance(cfg.distill.seg_kd_options["beta"], float)
    assert DistillLoss.from_config(cfg).seg_kd_options == {"beta": 2.0, "tau": 1.0}


def test_feat_kd_options_are_typed_and_fit_the_loss_classes():
    """The options the schema accepts per kind are the keyword arguments of that kind's loss class (whose defaults are
    the only ones), and a valid section builds the distiller the config describes."""
    import inspect

    from mtkd.config import FEAT_KD_OPTIONS
    from mtkd.losses import FEATURE_LOSSES, DistillLoss

    assert list(FEAT_KD_OPTIONS) == list(FEATURE_LOSSES)
    for kind, options in FEAT_KD_OPTIONS.items():
        init = vars(FEATURE_LOSSES[kind]).get("__init__")
        params = [p for p in inspect.signature(init).parameters if p != "self"] if init else []
        assert sorted(options) == sorted(params), kind
    cfg = load_config(
        None, ["teacher=t.pt", "distill.feat_kd={names: [p3, p4], kind: cc, options: {gamma: 1, order: 3}}"]
    )
    assert cfg.distill.feat_kd.options == {"gamma": 1.0, "order": 3}
    assert isinstance(cfg.distill.feat_kd.options["gamma"], float)
    loss = DistillLoss.from_config(cfg).feature.loss
    assert (loss.kernel, loss.gamma, loss.order) == ("gaussian", 1.0, 3)


# ---------------------------------------------------------------- the augmentation section
def test_aug_is_a_typed_section_and_empty_means_defaults(tmp_path):
    from mtkd.config import AugConfig, build_config
    from mtkd.data.transforms import AugmentParams

    assert AugmentParams is AugConfig
    default = load_config(None, []).aug
    assert default == AugConfig() and default.scale == (0.5, 1.5) and default.hflip == 0.5
    assert build_config({"aug": {}}).aug == default and build_config({"aug": None}).aug == default
    assert (
        load_config(None, []).to_dict()["aug"] == {}
    )  # saved as before: only the keys that differ from defaults
    old = tmp_path / "config.yaml"  # a config.yaml (or a checkpoint's config) saved before aug was typed
    old.write_text("epochs: 3\naug: {}\n")
    assert load_config(old).aug == default
    cfg = load_config(
        None, ["aug={scale: [0.8, 1.25], hflip: 0}", "min_area=2"]
    )  # flat keys of the section work
    assert cfg.aug == AugConfig(scale=(0.8, 1.25), hflip=0.0, min_area=2.0)
    assert (
        cfg.to_dict()["aug"]["scale"] == [0.8, 1.25]
        and load_config(save_config(cfg, tmp_path / "s.yaml")) == cfg
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("aug.scale=[1.5, 0.5]", "aug.scale: (1.5, 0.5) expected [low, high] with 0 < low <= high"),
        ("aug.scale=[1.0]", "aug.scale: (1.0,) expected [low, high]"),
        ("aug.hflip=2", "aug.hflip: 2.0 is outside the allowed range [0.0, 1.0]"),
        ("aug.hue=0.7", "aug.hue: 0.7 is outside the allowed range [0.0, 0.5]"),
        ("aug.brightness=-1", "aug.brightness: -1.0 is outside the allowed range [0.0, inf)"),
        ("aug.min_area=x", "aug.min_area: expected float, got str 'x'"),
    ],
)
def test_aug_values_name_key_and_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_config_imports_no_other_subpackage():
    """``mtkd.config`` sits at the bottom of the package graph: only ``mtkd.errors`` and ``mtkd.utils`` (also inside
    functions)."""
    import ast

    tree = ast.parse((ROOT / "mtkd" / "config.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    bad = [m for m in mods if m.startswith("mtkd") and not (m == "mtkd.errors" or m.startswith("mtkd.utils"))]
    assert not bad, bad
