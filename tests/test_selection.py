"""The tie rule: val accuracy, then val loss, then the later epoch."""

from vitlab.selection import top_k


def rec(epoch, acc, loss):
    return {"epoch": epoch, "val_acc": acc, "val_loss": loss}


def test_top_k_ranks_by_accuracy():
    records = [rec(1, 0.5, 1.0), rec(2, 0.7, 1.0), rec(3, 0.6, 1.0), rec(4, 0.9, 1.0)]
    assert [r["epoch"] for r in top_k(records, 3)] == [4, 2, 3]


def test_equal_accuracy_prefers_lower_val_loss():
    records = [rec(1, 0.8, 0.30), rec(2, 0.8, 0.20), rec(3, 0.8, 0.25), rec(4, 0.1, 0.1)]
    assert [r["epoch"] for r in top_k(records, 3)] == [2, 3, 1]


def test_equal_accuracy_and_loss_prefers_the_later_epoch():
    records = [rec(1, 0.8, 0.2), rec(5, 0.8, 0.2), rec(3, 0.8, 0.2), rec(2, 0.9, 0.5)]
    assert [r["epoch"] for r in top_k(records, 3)] == [2, 5, 3]
