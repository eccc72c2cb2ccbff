"""DINO's loss and centre update (Caron et al. 2021): cross-entropy between the sharpened, centred
teacher distribution of each global crop and the student distribution of every other crop.

Shapes: S student crops, T teacher (global) crops, N images per rank, K output dim. Computed in float32
whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError
from ssl_aug.losses._checks import check_positive

__all__ = ["dino_loss", "teacher_probabilities", "updated_center"]


def teacher_probabilities(teacher: torch.Tensor, center: torch.Tensor, teacher_temperature: float) -> torch.Tensor:
    """softmax((teacher - center) / teacher_temperature) over K: teacher (T, N, K), center (K,) or (1, K)."""
    check_positive("teacher_temperature", teacher_temperature)
    return F.softmax((teacher.float() - center.float().reshape(-1)) / teacher_temperature, dim=-1)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temperature: float = 0.1,
              teacher_temperature: float = 0.04) -> torch.Tensor:
    """DINO loss: student (S, N, K) logits of all crops, the global crops first; teacher (T, N, K) logits
    of the T <= S global crops (constants); center (K,).

        P_t = teacher_probabilities(teacher, center, teacher_temperature)            # centred, sharpened
        loss = mean over pairs (t, s), s != t, of mean_n sum_k -P_t[n, k] log softmax(student_s[n] / student_temperature)_k

    (S T - T pairs: every student crop against every teacher crop except the same view). Returns a 0-d tensor.

    Example:
        >>> dino_loss(torch.randn(4, 3, 16), torch.randn(2, 3, 16), torch.zeros(16)).shape
        torch.Size([])
    """
    check_positive("student_temperature", student_temperature)
    if student.dim() != 3 or teacher.dim() != 3 or student.shape[1:] != teacher.shape[1:] or \
            teacher.shape[0] > student.shape[0] or student.shape[0] < 2:
        raise SslAugError(f"dino_loss got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}: use "
                          f"(S, N, K) and (T, N, K) with 1 <= T <= S and S >= 2")
    s_crops, t_crops = student.shape[0], teacher.shape[0]
    with torch.autocast(student.device.type, enabled=False):
        p_t = teacher_probabilities(teacher.detach(), center.detach(), teacher_temperature)  # (T, N, K)
        log_p_s = F.log_softmax(student.float() / student_temperature, dim=-1)  # (S, N, K)
        cross = -torch.einsum("tnk,snk->tsn", p_t, log_p_s).mean(dim=2)  # (T, S)
        same = torch.diagonal(cross[:, :t_crops]).sum()
        return (cross.sum() - same) / (t_crops * s_crops - t_crops)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """center * momentum + batch_center * (1 - momentum), batch_center = mean of the teacher logits (T, N, K)
    over the crops and images of ALL ranks (one all-reduce). Returns the new (K,) or (1, K) centre."""
    rows = teacher.shape[0] * teacher.shape[1]
    batch_sum = dist_utils.all_reduce_sum(teacher.float().reshape(rows, -1).sum(dim=0))
    batch_center = batch_sum / (rows * dist_utils.world_size())
    return center * momentum + batch_center.reshape(center.shape).to(center.dtype) * (1 - momentum)
