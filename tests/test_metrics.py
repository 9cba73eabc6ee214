import pytest
import torch

from rn50.metrics import Meter, topk_correct


def test_topk_hand_computed():
    # 4 samples, 6 classes. Row ranks (best first) are written out to make the answer visible.
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.3, 0.0, 0.2, 0.5],  # order 1,5,2,4,0,3 ; target 1 -> top1 hit
            [0.8, 0.1, 0.7, 0.6, 0.5, 0.4],  # order 0,2,3,4,5,1 ; target 1 -> rank 6: miss top5
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # order 5,4,3,2,1,0 ; target 1 -> rank 5: top5 hit
            [0.3, 0.2, 0.9, 0.1, 0.0, 0.8],  # order 2,5,0,1,3,4 ; target 5 -> rank 2
        ]
    )
    targets = torch.tensor([1, 1, 1, 5])
    assert topk_correct(logits, targets, (1, 2, 5)) == [1, 2, 3]


def test_topk_with_fewer_classes_than_k_counts_every_row():
    logits = torch.tensor([[0.2, 0.1, 0.7], [0.5, 0.4, 0.1]])
    assert topk_correct(logits, torch.tensor([1, 2]), (1, 5)) == [0, 2]


def test_meter_weights_losses_by_batch_size():
    m = Meter()
    logits = torch.eye(3)  # predicts 0, 1, 2
    m.update(torch.tensor(1.0), logits, torch.tensor([0, 1, 0]))  # 2 of 3 right, loss 1
    m.update(torch.tensor(4.0), logits[:1], torch.tensor([0]))  # 1 of 1 right, loss 4
    s = m.summary()
    assert s["count"] == 4
    assert s["loss"] == pytest.approx((1.0 * 3 + 4.0 * 1) / 4)  # not (1 + 4) / 2
    assert s["top1"] == pytest.approx(75.0)
    assert s["top5"] == pytest.approx(100.0)
