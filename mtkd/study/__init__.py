"""Seed studies: does distillation beat plain fine-tuning of the same student beyond seed noise (``mtkd study``)?

Public API::

    mtkd.study.plan.Plan(out, data, seeds=(0, 1, 2), epochs=None, ft_config=..., kd_config=..., overrides=(),
                         teacher=None, teacher_epochs=None, teacher_model="yolo_mt_s", teacher_config=...,
                         student=None, ratio=None, target_macs=None, eval_weights="last")
    mtkd.study.runner.run_study(plan) -> dict                 (the study.json dict; also written with the report)
    mtkd.study.stats: summarize, paired_difference, t_interval, gap_recovered, verdict, verdict_line

``study.json``::

    version, split ("val"), data, seeds, epochs, eval_weights ("last" | "best"), metrics, confidence (0.95),
    teacher:  {weights, params, mAP50, mAP50_95, mIoU, train_s, eval_s, wall_s}   (train_s null: given)
    student:  {weights, params, mAP50, mAP50_95, mIoU, prune_s, eval_s, wall_s}   (before fine-tuning)
    arms:     {finetune | distill: {config, runs, wall_s (training + evaluation, all seeds), wall_s_per_seed,
                                    mAP50 | mAP50_95 | mIoU: {values (per seed), mean, std (n - 1)}}}
    diff:     {metric: {values, mean, std, n, t_crit, ci95: [low, high], verdict}}     (distill − finetune)
    gap_recovered: {metric: (KD − FT) / (teacher − FT) of the means, or null when FT >= teacher}
    verdicts: {metric: one line}, settings: the recorded settings (``mtkd.study.plan.settings``)

Metrics are fractions in [0, 1] (the report shows %). The CLI is ``mtkd.study.cli``.
"""
