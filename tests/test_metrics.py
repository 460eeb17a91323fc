import numpy as np
import pytest

from snipnb.metrics import average_accuracy, average_forgetting, backward_transfer, forward_transfer, summary

# Three tasks, worked by hand. Rows: after training task 0, 1, 2; columns: tasks 0, 1, 2.
R = np.array([[90.0, 12.0, 8.0],
              [70.0, 80.0, 15.0],
              [60.0, 85.0, 75.0]])
b = np.array([10.0, 11.0, 9.0])


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert average_accuracy(R) == pytest.approx((60 + 85 + 75) / 3)


def test_forgetting_uses_the_best_earlier_accuracy():
    # task 0: max(90, 70) - 60 = 30; task 1: max(12, 80) - 85 = -5 (it improved); mean 12.5
    assert average_forgetting(R) == pytest.approx(12.5)


def test_backward_transfer_uses_the_accuracy_right_after_training():
    # task 0: 60 - 90 = -30; task 1: 85 - 80 = +5; mean -12.5
    assert backward_transfer(R) == pytest.approx(-12.5)


def test_forgetting_and_bwt_differ_when_a_task_peaks_later():
    peaked = np.array([[50.0, 0.0], [70.0, 90.0]])  # task 0 got better while task 1 trained
    R3 = np.array([[50.0, 0.0, 0.0], [70.0, 90.0, 0.0], [40.0, 90.0, 80.0]])
    assert average_forgetting(peaked) == pytest.approx(50 - 70)
    assert average_forgetting(R3) == pytest.approx(((70 - 40) + (90 - 90)) / 2)
    assert backward_transfer(R3) == pytest.approx(((40 - 50) + (90 - 90)) / 2)


def test_forward_transfer_compares_with_accuracy_at_initialisation():
    # task 1: R[0, 1] - b[1] = 12 - 11 = 1; task 2: R[1, 2] - b[2] = 15 - 9 = 6; mean 3.5
    assert forward_transfer(R, b) == pytest.approx(3.5)


def test_single_task_and_bad_shapes():
    assert summary([[80.0]], [10.0]) == dict(avg_acc=80.0, forgetting=0.0, bwt=0.0, fwt=0.0)
    with pytest.raises(ValueError, match="R"):
        average_accuracy(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="b"):
        forward_transfer(R, [1.0, 2.0])


def test_forgetting_ignores_rows_from_before_a_task_was_learned():
    # Task 1's untrained head happened to read 95 after task 0; once learned it had 80, finally 85.
    # Counting the untrained row would call that 10 points of forgetting; it is a 5-point gain.
    lucky = np.array([[90.0, 95.0, 30.0],
                      [70.0, 80.0, 99.0],
                      [60.0, 85.0, 75.0]])
    # task 0: max(90, 70) - 60 = 30; task 1: max(80) - 85 = -5
    assert average_forgetting(lucky) == pytest.approx((30 - 5) / 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_metrics_refuse_non_finite_accuracies(bad):
    broken = R.copy()
    broken[1, 0] = bad
    for metric in (average_accuracy, average_forgetting, backward_transfer):
        with pytest.raises(ValueError, match=r"R\[1, 0\]"):
            metric(broken)
    with pytest.raises(ValueError, match=r"b\[2\]"):
        forward_transfer(R, [10.0, 11.0, bad])
