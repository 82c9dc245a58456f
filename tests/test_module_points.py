"""``module:PATH`` points: any submodule of any model, by its dotted path, with the checks the family points have
(shape, in-place safety, a wrong path listing the closest real ones), and through the distillation losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acamkd_hf.distiller import Distiller, build_distillation_loss
from acamkd_hf.settings import DistillationSettings
from acamkd_hf.taps import FeatureTaps, available_points, probe_feature_shapes, resolve_distillation_points


class TwoOutputs(nn.Module):
    """Returns a tuple: (a (B, 6, H, W) map, a (B, N, C) token tensor)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.flatten(2).transpose(1, 2)


class Net(nn.Module):
    """A model no family table knows: stem -> body (tuple output) -> head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.body = TwoOutputs()
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, pixel_values):
        return self.head(self.body(self.stem(pixel_values))[0])


def _x(seed=0):
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_a_module_point_is_that_modules_output():
    torch.manual_seed(0)
    model = Net()
    assert available_points(model) == []  # no family entry
    taps = FeatureTaps(model, ["module:stem.0", "module:body[0]"])
    x = _x()
    model(x)
    features = taps.collect()
    # Independent: the submodules run by hand.
    stem_conv = model.stem[0](x)
    torch.testing.assert_close(features["module:stem.0"], stem_conv)
    torch.testing.assert_close(features["module:body[0]"], model.body.conv(torch.relu(stem_conv)))
    assert probe_feature_shapes(model, ["module:body[0]"], (16, 16)) == {"module:body[0]": (6, 8, 8)}


def test_a_wrong_path_lists_the_closest_real_ones():
    with pytest.raises(ValueError, match=r"no submodule 'body\.cnv'; closest: body\.conv"):
        FeatureTaps(Net(), ["module:body.cnv"])
    for spelling in ("module:", "module:body[x]", "module:body[0"):
        with pytest.raises(ValueError, match="spell it module:PATH"):
            FeatureTaps(Net(), [spelling])


def test_outputs_that_are_not_maps_are_refused_with_what_they_hold():
    model = Net()
    for point, message in (
        ("module:body", r"returns a tuple of 2 items \(\[0\] \(2, 6, 8, 8\), \[1\] \(2, 64, 6\)\), not a tensor; name one "
                        r"of its \(B, C, H, W\) items: module:body\[0\]\.$"),
        ("module:body[2]", "has no item 2"),
        ("module:body[1]", r"shape \(2, 64, 6\); expected \(B, C, H, W\)"),
    ):
        taps = FeatureTaps(model, [point])
        with pytest.raises(RuntimeError, match=message):
            model(_x())
            taps.collect()
        taps.remove()


def test_an_in_place_change_after_the_hook_is_caught_and_names_the_module():
    model = Net()
    taps = FeatureTaps(model, ["module:stem.0"])
    model(_x())
    taps.collect()  # the ReLU after stem.0 is not in place: fine
    model.stem[1].inplace = True  # now the ReLU overwrites stem.0's output after the hook stored it
    model(_x())
    with pytest.raises(RuntimeError, match=r"'module:stem\.0'.*modified in place.*'stem\.0'"):
        taps.collect()


def test_a_module_point_trains_through_the_losses_and_keeps_its_name():
    torch.manual_seed(0)
    student, teacher = Net(), Net().eval()
    points = resolve_distillation_points(student, teacher, ["module:body[0]"])
    settings = DistillationSettings(method="mse").resolved(points, num_masks=1)
    shapes = [probe_feature_shapes(model, points, (16, 16)) for model in (student, teacher)]
    loss = build_distillation_loss(settings, *shapes)
    assert loss.point_names == ["module:body[0]"] and list(loss.points) == ["module:body[0]"]  # no dot: key as is
    taps = FeatureTaps(teacher, points)
    with torch.no_grad():
        teacher(_x())
    target = taps.collect()
    distiller = Distiller(student, loss)
    student_features = distiller.student_taps
    student(_x())
    terms = loss(student_features.collect(), target)
    assert set(terms) >= {"loss", "module:body[0]/loss"}
    terms["loss"].backward()
    assert student.body.conv.weight.grad.abs().sum() > 0


def test_an_output_with_no_map_says_so_instead_of_suggesting_an_item():
    class Tokens(nn.Module):
        def forward(self, pixel_values):
            tokens = pixel_values.flatten(2).transpose(1, 2)
            return tokens, tokens.mean(1)

    model = nn.Sequential()
    model.add_module("encoder", Tokens())
    taps = FeatureTaps(model, ["module:encoder"])
    with pytest.raises(RuntimeError, match=r"none of its items is a \(B, C, H, W\) map: name another module"):
        model(_x())
        taps.collect()
