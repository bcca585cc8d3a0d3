"""The expert geometries (cerebrum.nn.manifolds), in float64: maps invert each other inside
their domain, points stay on their manifold, curvature -> 0 gives the euclidean expert,
gradients through the maps and the curvature are right (gradcheck), and bad settings are
clear errors."""

import math

import pytest
import torch

from cerebrum.nn.manifolds import (
    MANIFOLDS,
    GeometricExpert,
    Lorentz,
    PoincareBall,
    ProductManifold,
    Sphere,
    lorentz_inner,
    make_manifold,
    mobius_add,
)

H = 6


def tangent(n=5, scale=0.8, seed=0, dim=H):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return u / u.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g,
                                                         dtype=torch.float64) * scale


def manifold64(kind, curvature=None):
    m = make_manifold(kind, H, curvature)
    return m.double()


@pytest.mark.parametrize("kind", MANIFOLDS)
def test_exp_and_log_invert_each_other_inside_the_domain(kind):
    m = manifold64(kind)
    u = tangent()
    if kind == "simplex":  # the clr chart: zero-mean tangent vectors
        u = u - u.mean(-1, keepdim=True)
    p = m.expmap0(u)
    assert m.check_point(p, atol=1e-10)
    torch.testing.assert_close(m.logmap0(p), u, atol=1e-10, rtol=1e-10)
    if kind != "complex":  # and the other way round: exp(log(p)) = p
        torch.testing.assert_close(m.expmap0(m.logmap0(p)), p, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", MANIFOLDS)
def test_points_stay_on_the_manifold_after_the_native_operation(kind):
    torch.manual_seed(1)
    expert = GeometricExpert(4, H, kind).double()
    p = expert.manifold.expmap0(tangent(scale=3.0))
    q = expert.native(p)
    if kind == "complex":
        assert q.is_complex()
    else:
        assert expert.manifold.check_point(q, atol=1e-9)


def test_the_invariants_are_the_documented_ones():
    u = tangent(scale=5.0)
    ball = PoincareBall(H, -2.0).double()
    assert (ball.expmap0(u).norm(dim=-1) < 1 / math.sqrt(2)).all()
    sphere = Sphere(H, 0.5).double()
    torch.testing.assert_close(sphere.expmap0(u).norm(dim=-1),
                               torch.full((5,), 1 / math.sqrt(0.5), dtype=torch.float64))
    hyperboloid = Lorentz(H, -3.0).double()
    p = hyperboloid.expmap0(u)
    torch.testing.assert_close(lorentz_inner(p, p)[..., 0],
                               torch.full((5,), -1 / 3.0, dtype=torch.float64))
    simplex = make_manifold("simplex", H).double()
    torch.testing.assert_close(simplex.expmap0(u).sum(-1), torch.ones(5, dtype=torch.float64))


def test_translation_carries_the_origin_to_exp_of_b():
    b = tangent(1)[0]
    for m in (PoincareBall(H, -1.5).double(), Sphere(H, 0.7).double(),
              Lorentz(H, -0.8).double()):
        origin = m.expmap0(torch.zeros(1, H, dtype=torch.float64))
        torch.testing.assert_close(m.translate(origin, b), m.expmap0(b[None]), atol=1e-10,
                                   rtol=1e-10)


def test_translation_is_an_isometry_of_the_ball():
    ball = PoincareBall(H, -1.0).double()
    x, y = ball.expmap0(tangent(seed=1)), ball.expmap0(tangent(seed=2))
    b = tangent(1, seed=3)[0]
    c = ball.c.double()

    def distance(p, q):
        return 2 * torch.atanh(mobius_add(-p, q, c).norm(dim=-1))

    torch.testing.assert_close(distance(ball.translate(x, b), ball.translate(y, b)),
                               distance(x, y), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("kind", ["hyperbolic", "spherical", "poincare", "lorentzian",
                                  "product"])
def test_curvature_to_zero_gives_the_euclidean_expert(kind):
    torch.manual_seed(2)
    tiny = 1e-9 * (1 if kind == "spherical" else -1)
    curved = GeometricExpert(4, H, kind, curvature=tiny).double()
    flat = GeometricExpert(4, H, "euclidean").double()
    flat.up.weight.data.copy_(curved.up.weight)
    flat.down.weight.data.copy_(curved.down.weight)
    flat.bias.data.copy_(curved.bias)
    if kind == "poincare":  # M (x)_c p -> M p: with M = I both are the identity
        curved.matrix.data.copy_(torch.eye(H))
    x = torch.randn(7, 4, dtype=torch.float64)
    torch.testing.assert_close(curved(x), flat(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", MANIFOLDS)
def test_gradients_through_the_maps_and_the_curvature(kind):
    torch.manual_seed(3)
    expert = GeometricExpert(3, H, kind).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(expert, (x,), eps=1e-6, atol=1e-5)
    names = expert.curvature_parameters()
    x_fixed = x.detach()
    if kind in ("hyperbolic", "spherical", "lorentzian", "product"):
        assert names
    for name in names:
        raw = dict(expert.named_parameters())[name]
        base = raw.detach().clone()
        # the expert's output as a function of its (raw) curvature alone
        owner = expert.get_submodule(name.rsplit(".", 1)[0]) if "." in name else expert

        def f(value, owner=owner, x=x_fixed):
            del owner.raw_curvature
            owner.raw_curvature = value
            return expert(x)

        value = base.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(f, (value,), eps=1e-6, atol=1e-5)
        del owner.raw_curvature
        owner.raw_curvature = torch.nn.Parameter(base)


def test_maps_run_in_float32_under_autocast():
    expert = GeometricExpert(8, 6, "lorentzian")
    seen = {}
    original = expert.manifold.expmap0

    def spy(u):
        seen["dtype"] = u.dtype
        return original(u)

    expert.manifold.expmap0 = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = expert(torch.randn(5, 8))
    assert seen["dtype"] == torch.float32 and out.dtype == torch.bfloat16
    assert expert.manifold.raw_curvature.dtype == torch.float32


def test_native_and_paired_complex_weights_compute_the_same():
    torch.manual_seed(4)
    paired = GeometricExpert(4, H, "complex")
    native = GeometricExpert(4, H, "complex", complex_parameters="native")
    native.load_state_dict({**paired.state_dict(),
                            "weight": torch.view_as_complex(paired.weight.detach())})
    assert native.weight.is_complex() and not paired.weight.is_complex()
    x = torch.randn(3, 4)
    torch.testing.assert_close(native(x), paired(x))


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: make_manifold("elliptic", 4), ValueError, "unknown manifold 'elliptic'"),
    (lambda: make_manifold("hyperbolic", 4, 1.0), ValueError,
     "curvature of a hyperbolic manifold must be negative, got 1.0"),
    (lambda: make_manifold("spherical", 4, -1.0), ValueError,
     "curvature of a spherical manifold must be positive, got -1.0"),
    (lambda: make_manifold("lorentzian", 4, 0.0), ValueError, "must be negative, got 0.0"),
    (lambda: make_manifold("euclidean", 4, -1.0), ValueError, "has no curvature"),
    (lambda: make_manifold("complex", 5), ValueError, "needs an even dim"),
    (lambda: ProductManifold(2), ValueError, "needs dim >= 3"),
    (lambda: make_manifold("hyperbolic", 4, "big"), TypeError, "curvature must be a real"),
    (lambda: make_manifold("hyperbolic", 0), ValueError, "dim must be >= 1"),
    (lambda: GeometricExpert(4, 4, "complex", complex_parameters="x"), ValueError,
     "complex_parameters must be one of pairs, native"),
])
def test_bad_settings_are_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_curvatures_are_learnable_and_reported_signed():
    assert GeometricExpert(4, H, "hyperbolic", -0.5).curvatures() == pytest.approx([-0.5])
    assert GeometricExpert(4, H, "spherical", 2.0).curvatures() == pytest.approx([2.0])
    assert GeometricExpert(4, H, "product", -0.5).curvatures() == pytest.approx([-0.5, 0.5])
    poincare = GeometricExpert(4, H, "poincare")
    assert poincare.curvatures() == [-1.0] and poincare.curvature_parameters() == []
    assert GeometricExpert(4, H, "euclidean").curvatures() == []
