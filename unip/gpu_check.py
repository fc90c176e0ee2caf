"""UNIP's row of the GPU check: one NMI-HAD distillation step (frozen teacher attention,
KL into the student's last block, AdamW), registered in ``unipbench.gpu_checks``."""

from __future__ import annotations

import torch

from bench.gpu.check import Row, Runner, finish, forward_macs, time_steps


def distill_bf16(runner: Runner, row: Row) -> Row:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from bench.backbones.adapter import load_backbone
    from bench.protocols.optim import build_adamw
    from bench.protocols.schedules import warmup_cosine
    from unip.distill import attention_kl, distill_param_groups
    from unip.distill_config import OptimConfig
    from unip.student import LastBlockLogits, build_student
    from unip.teacher import AttentionTeacher

    cfg = runner.cfg
    # Accelerate keeps one process-wide state; a fresh one per check, as runs do.
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(cpu=not runner.cuda, mixed_precision="bf16")
    teacher_bb = load_backbone(cfg.teacher_adapter, cfg.teacher_size, None,
                               img_size=cfg.distill_img)
    teacher = AttentionTeacher(teacher_bb, cfg.teacher_layer).to(acc.device)
    student = LastBlockLogits(build_student(cfg.student_size, teacher.heads, cfg.distill_img,
                                            depth=cfg.depth))
    shape = (3, cfg.distill_img, cfg.distill_img)
    macs_t = forward_macs(teacher, shape, acc.device)
    student.to(acc.device)
    macs_s = forward_macs(student, shape, acc.device)
    flops = (2 * macs_t + 3 * 2 * macs_s) * cfg.distill_batch
    o = OptimConfig()  # the paper's recipe: AdamW betas, weight decay
    lr = o.effective_lr
    optimizer = build_adamw(distill_param_groups(student.named_parameters(), lr,
                                                 o.weight_decay), lr, betas=o.betas)
    total = cfg.warmup + cfg.steps + 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, 1))
    model, optimizer = acc.prepare(student, optimizer)
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.distill_batch, *shape, generator=g).to(acc.device)

    def step() -> None:  # the engine's distillation step: frozen teacher, KL, AdamW
        with acc.autocast():
            loss = attention_kl(model(x), teacher(x))
        acc.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    timing = time_steps(step, cfg.warmup, cfg.steps, runner.dev)
    row.notes.update(teacher=f"{cfg.teacher_adapter}-{cfg.teacher_size} layer "
                     f"{cfg.teacher_layer}", student=cfg.student_size,
                     img=cfg.distill_img, batch=cfg.distill_batch,
                     teacher_macs=macs_t, student_macs=macs_s)
    return finish(row, timing, flops, runner.peak)
