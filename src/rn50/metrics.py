"""Top-k accuracy and running sums that are exact across batches and ranks.

Sums are kept as counts (correct predictions, images, loss x images) and only divided at
the end, so a mean over ranks or uneven batches is never an average of averages.
"""

from collections.abc import Sequence

import torch

from rn50.distributed import all_reduce


def topk_correct(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> list[int]:
    """How many rows have their target among the k highest logits, for each k.

    k larger than the number of classes counts every row (as with 10-class data and top-5).
    """
    return [int(c) for c in topk_correct_tensor(logits, targets, ks)]


def topk_correct_tensor(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> torch.Tensor:
    """Like topk_correct, as a float64 tensor on the logits' device (no host sync)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (N, kmax), best first
    hit = top.eq(targets.view(-1, 1))  # at most one True per row
    return torch.stack([hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]).double()


class Meter:
    """Sums of loss x images, top-1 hits, top-5 hits, images and skipped (undecodable) files,
    on the device."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)

    def update(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> None:
        """`loss` is the batch mean, weighted by the batch size, or the per-sample losses (N,),
        summed in float64: then the total does not depend on how the images were batched.
        `keep`: a 0-dim bool tensor; where False the batch adds nothing (a step refused on
        the device, whose NaN loss must not reach the sums), without a host sync."""
        n = targets.shape[0]
        hits = topk_correct_tensor(logits.detach(), targets, (1, 5))
        loss = loss.detach().double()
        total = loss.sum() if loss.ndim else loss * n
        add = torch.stack([total, hits[0], hits[1], self.sums.new_tensor(n)])
        if keep is not None:
            add = torch.where(keep, add, torch.zeros_like(add))
        self.sums[:4] += add

    def skip(self, paths: list[str]) -> None:
        """Count files that could not be decoded (they are in no other sum)."""
        if paths:
            self.sums[4] += len(paths)

    @property
    def skipped(self) -> int:
        """Files left out so far as unreadable."""
        return int(self.sums[4])

    def all_reduce(self) -> "Meter":
        """Sum the counts of every rank (a no-op in a single process)."""
        all_reduce(self.sums)
        return self

    @property
    def count(self) -> int:
        """Images scored so far."""
        return int(self.sums[3])

    def summary(self) -> dict[str, float]:
        """{'loss': mean loss, 'top1': %, 'top5': %, 'count': images, 'skipped': files}."""
        loss, top1, top5, n, skipped = self.sums.tolist()
        n_ = max(n, 1.0)
        return {
            "loss": loss / n_,
            "top1": 100.0 * top1 / n_,
            "top5": 100.0 * top5 / n_,
            "count": int(n),
            "skipped": int(skipped),
        }
