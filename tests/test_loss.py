"""Flow bins and the CMP loss, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpmodel.loss import bin_centres, bins_to_flow, cmp_loss, flow_to_bins

STEP = 100 / 99  # px: the width of a bin with the paper's 99 bins over +-50 px


def flow_of(x: float, y: float) -> torch.Tensor:
    """A (1, 2, 1, 1) flow of one pixel."""
    return torch.tensor([x, y], dtype=torch.float32).view(1, 2, 1, 1)


def row_of(*values: float) -> torch.Tensor:
    """A (1, 2, 1, N) flow whose x and y both run through ``values``."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1).expand(1, 2, 1, -1)


def one_hot_logits(bins_x: torch.Tensor, bins_y: torch.Tensor, num_bins: int = 99) -> torch.Tensor:
    """(B, 2n, H, W) logits of 30 at the given (B, H, W) bins and 0 elsewhere."""
    x = torch.nn.functional.one_hot(bins_x, num_bins).permute(0, 3, 1, 2)
    y = torch.nn.functional.one_hot(bins_y, num_bins).permute(0, 3, 1, 2)
    return 30.0 * torch.cat([x, y], dim=1).float()


def test_bin_centres_are_the_middles_of_equal_cells_with_zero_in_the_middle():
    centres = bin_centres()
    assert centres.shape == (99,)
    assert centres[49] == 0
    assert centres[0].item() == pytest.approx(-50 + STEP / 2) and centres[98] == -centres[0]
    assert torch.allclose(centres.diff(), torch.full((98,), STEP))


def test_zero_flow_is_bin_49_and_the_ends_clamp():
    bins = flow_to_bins(row_of(0.0, 50.0, -50.0, 1e4, -1e4, 49.9, -49.9))
    assert bins.dtype == torch.long
    assert bins.shape == (1, 2, 1, 7)
    assert bins[0, 0, 0].tolist() == bins[0, 1, 0].tolist() == [49, 98, 0, 98, 0, 98, 0]


def test_every_centre_maps_to_its_own_bin_and_a_cell_holds_its_lower_edge():
    assert flow_to_bins(row_of(*bin_centres().tolist()))[0, 0, 0].tolist() == list(range(99))
    # just below / above the edge between bins 49 and 50
    bins = flow_to_bins(row_of(0.49 * STEP, 0.51 * STEP))
    assert bins[0, 0, 0].tolist() == [49, 50]
    # exact edges (5 bins over +-2.5 px: cells of 1 px from -2.5) belong to the upper cell
    bins = flow_to_bins(row_of(-1.5, -0.5, 0.5, 1.5), num_bins=5, flow_range=2.5)
    assert bins[0, 0, 0].tolist() == [1, 2, 3, 4]


def test_x_and_y_are_quantised_separately():
    assert flow_to_bins(flow_of(3 * STEP, -2 * STEP)).view(-1).tolist() == [52, 47]


def test_other_bin_settings():
    # 5 bins over +-2.5 px: centres -2, -1, 0, 1, 2
    bins = flow_to_bins(flow_of(1.2, -0.7), num_bins=5, flow_range=2.5)
    assert bins.view(-1).tolist() == [3, 1]


@pytest.mark.parametrize(
    "call",
    [
        lambda: flow_to_bins(torch.zeros(1, 3, 4, 4)),
        lambda: flow_to_bins(torch.zeros(2, 4, 4)),
        lambda: flow_to_bins(torch.zeros(1, 2, 4, 4, dtype=torch.long)),
        lambda: flow_to_bins(torch.zeros(1, 2, 4, 4), num_bins=1),
        lambda: flow_to_bins(torch.zeros(1, 2, 4, 4), flow_range=0.0),
    ],
)
def test_flow_to_bins_rejects_malformed_input(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("mode", ["argmax", "expectation"])
def test_one_hot_logits_give_the_bin_centres(mode):
    bins_x = torch.tensor([[[0, 49], [60, 98]]])
    bins_y = torch.tensor([[[98, 10], [49, 0]]])
    flow = bins_to_flow(one_hot_logits(bins_x, bins_y), mode=mode)
    centres = bin_centres()
    assert flow.shape == (1, 2, 2, 2)
    assert torch.allclose(flow[:, 0], centres[bins_x], atol=1e-4)
    assert torch.allclose(flow[:, 1], centres[bins_y], atol=1e-4)


def test_expectation_of_a_two_bin_distribution():
    # x: p = 0.25 on bin 49 (0 px), 0.75 on bin 50 (STEP px); y: even split of bins 0 and 98
    logits = torch.full((1, 198, 1, 1), -1e4)
    logits[0, 49], logits[0, 50] = math.log(0.25), math.log(0.75)
    logits[0, 99 + 0] = logits[0, 99 + 98] = 0.0
    flow = bins_to_flow(logits).view(-1)
    assert flow[0].item() == pytest.approx(0.75 * STEP, abs=1e-5)
    assert flow[1].item() == pytest.approx(0.0, abs=1e-4)
    # argmax picks the heavier bin, and one of the two tied ones
    argmax = bins_to_flow(logits, mode="argmax").view(-1)
    assert argmax[0].item() == pytest.approx(STEP)
    assert abs(argmax[1].item()) == pytest.approx(50 - STEP / 2)


def test_argmax_costs_a_quarter_step_on_uniform_values():
    flow = torch.linspace(-49, 49, 20001).view(1, 1, 1, -1).expand(1, 2, 1, -1)
    bins = flow_to_bins(flow)
    decoded = bins_to_flow(one_hot_logits(bins[:, 0], bins[:, 1]), mode="argmax")
    error = (decoded - flow).abs()
    assert error.max() <= STEP / 2 + 1e-4
    assert error.mean().item() == pytest.approx(STEP / 4, rel=0.01)  # 0.255 px


@settings(max_examples=50, deadline=None)
@given(st.floats(-60, 60), st.floats(-60, 60))
def test_quantisation_round_trip_is_within_half_a_step_inside_the_range(x, y):
    bins = flow_to_bins(flow_of(x, y))
    decoded = bins_to_flow(one_hot_logits(bins[:, 0], bins[:, 1]), mode="argmax").view(-1)
    for value, got in zip((x, y), decoded.tolist(), strict=True):
        assert abs(min(max(value, -50), 50) - got) <= STEP / 2 + 1e-4


@pytest.mark.parametrize(
    "call",
    [
        lambda: bins_to_flow(torch.zeros(1, 197, 2, 2)),
        lambda: bins_to_flow(torch.zeros(1, 2, 2, 2)),
        lambda: bins_to_flow(torch.zeros(198, 2, 2)),
        lambda: bins_to_flow(torch.zeros(1, 198, 2, 2), mode="median"),
    ],
)
def test_bins_to_flow_rejects_malformed_input(call):
    with pytest.raises(ValueError):
        call()


def test_loss_of_one_pixel_by_hand():
    # 3 bins over +-1 px: centres -1, 0, 1. Flow (0.2, -0.9) -> bins x 1, y 0.
    logits = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0, 0.0]).view(1, 6, 1, 1)
    ce_x = math.log(1 + math.e + math.e**2) - 1.0  # -log softmax([0, 1, 2])[1]
    ce_y = math.log(math.e + 2) - 1.0  # -log softmax([1, 0, 0])[0]
    loss = cmp_loss(logits, flow_of(0.2, -0.9), flow_range=1.0)
    assert loss.item() == pytest.approx(ce_x + ce_y, rel=1e-6)


def test_uniform_logits_cost_two_log_bins_and_are_upsampled_to_the_target():
    # constant logits at 2 x 2 upsample to a constant 8 x 8 prediction
    loss = cmp_loss(torch.zeros(2, 198, 2, 2), torch.randn(2, 2, 8, 8) * 20)
    assert loss.item() == pytest.approx(2 * math.log(99), rel=1e-6)
    # confident, right logits at 1 x 1 cost nothing on any target size
    logits = one_hot_logits(torch.full((1, 1, 1), 49), torch.full((1, 1, 1), 52))
    assert cmp_loss(logits, flow_of(0.0, 3 * STEP).expand(1, 2, 8, 8)).item() < 1e-9


def test_logits_are_upsampled_bilinearly_with_the_corners_aligned():
    # 3 bins over +-1 px; x logits [2, 0, 0] and [0, 0, 2] in two columns, y logits all 0.
    logits = torch.zeros(1, 6, 1, 2)
    logits[0, 0, 0, 0] = logits[0, 2, 0, 1] = 2.0
    # stretched to 4 columns (align_corners=True): weights 1, 2/3, 1/3, 0 on the first column
    columns = [[2.0, 0.0, 0.0], [4 / 3, 0.0, 2 / 3], [2 / 3, 0.0, 4 / 3], [0.0, 0.0, 2.0]]
    # target 0 px -> bin 1 for x and y; CE(l, 1) = logsumexp(l) - l[1]
    ce_x = [math.log(sum(math.exp(v) for v in column)) for column in columns]
    expected = sum(ce_x) / 4 + math.log(3)
    loss = cmp_loss(logits, torch.zeros(1, 2, 1, 4), flow_range=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_invalid_pixels_do_not_count():
    # pixel 0: well predicted; pixel 1: predicted +50 px away from its target
    bins_x, bins_y = torch.tensor([[[49, 98]]]), torch.tensor([[[49, 98]]])
    logits = one_hot_logits(bins_x, bins_y) * 0.2  # soft enough that pixel 0 costs a little
    flow = torch.zeros(1, 2, 1, 2)
    valid = torch.tensor([[[True, False]]])
    loss = cmp_loss(logits, flow, valid)
    alone = cmp_loss(logits[..., :1], flow[..., :1])
    assert loss.item() == pytest.approx(alone.item(), rel=1e-6)
    assert alone.item() > 0
    assert cmp_loss(logits, flow).item() > 10 * alone.item()


def test_the_mean_is_over_valid_pixels_of_the_whole_batch():
    logits = torch.randn(2, 10, 3, 3)
    flow = torch.randn(2, 2, 3, 3)
    valid = torch.zeros(2, 3, 3, dtype=torch.bool)
    valid[0, 0, 0] = valid[1, 2, 1] = valid[1, 1, 2] = True
    per_pixel = [
        cmp_loss(
            logits[b : b + 1, :, i : i + 1, j : j + 1], flow[b : b + 1, :, i : i + 1, j : j + 1]
        )
        for b, i, j in valid.nonzero().tolist()
    ]
    assert cmp_loss(logits, flow, valid).item() == pytest.approx(
        sum(per_pixel).item() / 3, rel=1e-5
    )


def test_no_valid_pixel_gives_zero_with_a_zero_gradient():
    logits = torch.randn(1, 198, 2, 2, requires_grad=True)
    loss = cmp_loss(logits, torch.zeros(1, 2, 16, 16), torch.zeros(1, 16, 16, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_the_gradient_flows_through_the_upsampling():
    logits = torch.zeros(1, 198, 2, 2, requires_grad=True)
    cmp_loss(logits, torch.full((1, 2, 16, 16), 10.0)).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(("height", "width", "stride"), [(40, 56, 4), (41, 53, 4), (37, 50, 3)])
def test_a_stride_scores_the_centre_pixels_with_their_full_resolution_logits(height, width, stride):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 198, 6, 7, generator=generator) * 5
    flow = torch.randn(2, 2, height, width, generator=generator) * 8
    valid = torch.rand(2, height, width, generator=generator) > 0.3
    full = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
    o = stride // 2
    picked = full[:, :, o::stride, o::stride]
    target = flow_to_bins(flow[:, :, o::stride, o::stride], 99)
    per_pixel = F.cross_entropy(picked[:, :99], target[:, 0], reduction="none") + F.cross_entropy(
        picked[:, 99:], target[:, 1], reduction="none"
    )
    mask = valid[:, o::stride, o::stride]
    expected = per_pixel[mask].mean()
    assert cmp_loss(logits, flow, valid, stride=stride).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_a_stride_under_one_is_refused():
    with pytest.raises(ValueError, match="stride"):
        cmp_loss(torch.zeros(1, 198, 2, 2), torch.zeros(1, 2, 8, 8), stride=0)


@pytest.mark.parametrize(
    ("logits", "flow", "valid", "message"),
    [
        (torch.zeros(1, 197, 2, 2), torch.zeros(1, 2, 8, 8), None, r"\(1, 197, 2, 2\)"),
        (torch.zeros(1, 198, 2, 2), torch.zeros(1, 1, 8, 8), None, r"\(1, 1, 8, 8\)"),
        (torch.zeros(2, 198, 2, 2), torch.zeros(1, 2, 8, 8), None, "batch"),
        (torch.zeros(1, 198, 2, 2), torch.zeros(1, 2, 8, 8), torch.ones(1, 8, 8), "bool"),
        (torch.zeros(1, 198, 2, 2), torch.zeros(1, 2, 8, 8), torch.ones(1, 4, 4).bool(), "4, 4"),
    ],
)
def test_loss_rejects_mismatched_shapes(logits, flow, valid, message):
    with pytest.raises(ValueError, match=message):
        cmp_loss(logits, flow, valid)
