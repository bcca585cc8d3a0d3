"""Expert geometries of the mixture of geometric experts (seed 004, `cerebrum.models.mgm`).

A geometric expert (`GeometricExpert`) maps a token's hidden state x (N, C) to a tangent
vector at the manifold's origin, u = W_in x (N, H); sends it onto the manifold with the
exponential map, p = exp_o(u); moves it there with an operation native to the geometry,
q = T(p); brings it back with the logarithmic map, v = log_o(q) (N, H); and returns
W_out act(v) (N, C). The maps, the native operation and the curvature are computed in float32
(float64 stays float64) with autocast switched off, whatever precision the rest of the network
runs in; only the two linear maps run under autocast.

What is geometric: log_o . T . exp_o is, for every curved geometry here, a nonlinear,
curvature-dependent map of u (a chain of tangent-space linear maps alone would collapse into
one euclidean linear layer). T is the geometry's own "translation": the isometry that carries
the origin o to exp_o(b) for a learned tangent vector b (Moebius addition on a ball, a rotation
on the sphere, a boost on the hyperboloid). In flat space it is u + b (a bias); in curved space
it bends: on the ball, points far from o are contracted toward the boundary (distances grow
exponentially, so trees embed with low distortion), on the sphere translations wrap around
(bounded, periodic features). As the curvature goes to 0 every curved expert becomes the
euclidean one (tested).

The eight types (`MANIFOLDS`):
- "euclidean": R^H, exp and log the identity, T(p) = p + b. A plain feed-forward expert, the
  reference the others bend.
- "hyperbolic": the Poincare ball of curvature -c, c > 0 learnable; T = Moebius addition of
  exp_o(b). Points satisfy |p| < 1/sqrt(c) (tested).
- "spherical": the sphere of curvature +c, c > 0 learnable, embedded in R^(H+1) as
  |p| = 1/sqrt(c) with origin o = (1/sqrt(c), 0, ..., 0); T = the rotation in the plane of o
  and b that carries o to exp_o(b). Points satisfy |p| = 1/sqrt(c) (tested).
- "poincare": the Poincare ball of fixed curvature -c (c = 1 by default, a buffer); T is the
  hyperbolic linear layer of Ganea et al. (2018): a Moebius matrix-vector product M (x) p
  (a learned H x H matrix applied along geodesics through o, which rescales hyperbolic
  distances nonlinearly) followed by the Moebius addition of exp_o(b).
- "simplex": the open probability simplex (rows positive, summing to one, tested). exp_o is
  the softmax, log_o the centred log-ratio (clr); they invert each other on zero-mean tangent
  vectors. T is a learned Markov transition p -> p A (A row-stochastic), a convex mixing that
  keeps the simplex and is nonlinear in clr coordinates. No curvature.
- "complex": C^(H/2) (H even). exp_o pairs the coordinates into complex numbers; T is a
  complex-valued linear map z -> W z + b (complex W: each entry a rotation with a scaling, so
  phases add: the map commutes with multiplication by e^(i phi)) followed by a squared
  modReLU, (|z| + beta)_+^2 z / |z|, which acts on magnitudes (as the other experts' ReLU^2)
  and keeps phases. log_o unpairs. Its
  weights are complex64 parameters (`complex_parameters="native"`, which the
  `cerebrum.train.complex_scaler.ComplexFilteredGradScaler` exists for) or, by default, real
  tensors with a trailing (real, imaginary) axis of 2 viewed as complex (identical arithmetic,
  and every optimiser, gradient scaler, DDP and safetensors handle them unchanged).
- "lorentzian": the hyperboloid <p, p>_L = -1/c (Lorentz inner product
  <x, y>_L = -x_0 y_0 + sum_i x_i y_i), p_0 > 0, c > 0 learnable, embedded in R^(H+1); T = the
  Lorentz boost carrying o = (1/sqrt(c), 0, ...) to exp_o(b). The same geometry as
  "hyperbolic" in another model, numerically better far from the origin. The Lorentz
  product of its points is -1/c (tested).
- "product": the product of a hyperbolic ball, a sphere and a euclidean factor, H split in
  three (the first two each get H // 3); each factor has its own maps, translation and (for
  the curved two) learnable curvature.

Curvature conventions: `curvature` is signed (negative for hyperbolic geometries, positive for
the sphere, 0 for flat); a learnable magnitude is stored as c = softplus(raw) so it stays
positive. A curvature of the wrong sign is a ValueError naming it.

Shapes: N rows (tokens), C model width, H tangent width (the expert's hidden size).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F

MANIFOLDS = ("euclidean", "hyperbolic", "spherical", "poincare", "simplex", "complex",
             "lorentzian", "product")
#: Curvature each curved type starts at when none is given (signed).
DEFAULT_CURVATURE = {"hyperbolic": -1.0, "spherical": 1.0, "poincare": -1.0,
                     "lorentzian": -1.0, "product": -1.0}
COMPLEX_STORAGES = ("pairs", "native")


def _eps(x: torch.Tensor) -> float:
    return 1e-15 if x.dtype == torch.float64 else 1e-7


def _norm(x: torch.Tensor) -> torch.Tensor:
    """|x| over the last axis, kept, clamped away from 0 (safe to divide by)."""
    return x.norm(dim=-1, keepdim=True).clamp_min(_eps(x))


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _check_real(value, *, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_dim(value, *, name: str = "dim", minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class Manifold(nn.Module):
    """Base class: a manifold with an origin o, exp_o / log_o maps and a native translation.

    `dim` is the tangent dimension H; `point_dim` the width of a point's coordinates (H + 1 for
    the embedded sphere and hyperboloid, H otherwise). Subclasses implement `expmap0`,
    `logmap0`, `translate` (T above, with the learned tangent vector b of shape (H,)) and
    `check_point`; `curvature` is the signed curvature (a 0-dim tensor, float32 or float64)."""

    kind: str = ""
    point_extra: int = 0

    def __init__(self, dim: int):
        super().__init__()
        self.dim = _check_dim(dim)

    @property
    def point_dim(self) -> int:
        """Coordinates of a point (H, or H + 1 for embedded models)."""
        return self.dim + self.point_extra

    @property
    def curvature(self) -> torch.Tensor:
        """The signed curvature (0 for flat or curvature-free geometries)."""
        return torch.zeros(())

    @property
    def learnable_curvature(self) -> bool:
        """Whether the curvature is a trained parameter."""
        return False

    def expmap0(self, u: torch.Tensor) -> torch.Tensor:
        """Tangent vectors at the origin (..., H) -> points (..., point_dim)."""
        raise NotImplementedError

    def logmap0(self, p: torch.Tensor) -> torch.Tensor:
        """Points (..., point_dim) -> tangent vectors at the origin (..., H)."""
        raise NotImplementedError

    def translate(self, p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The isometry carrying the origin to exp_o(b), applied to points p."""
        raise NotImplementedError

    def check_point(self, p: torch.Tensor, atol: float = 1e-5) -> bool:
        """Whether p lies on the manifold (within atol)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class _CurvedMixin:
    """A curvature magnitude c > 0, learnable (softplus of a float32 parameter) or fixed."""

    sign: float = -1.0

    def _init_curvature(self, curvature: float | None, learnable: bool, default: float):
        curvature = default if curvature is None else _check_real(curvature, name="curvature")
        if curvature == 0 or math.copysign(1.0, curvature) != self.sign:
            want = "negative" if self.sign < 0 else "positive"
            raise ValueError(f"curvature of a {self.kind} manifold must be {want}, got "
                             f"{curvature}")
        magnitude = abs(curvature)
        if learnable:
            self.raw_curvature = nn.Parameter(torch.tensor(_softplus_inverse(magnitude)))
        else:
            self.register_buffer("fixed_curvature", torch.tensor(magnitude))

    @property
    def c(self) -> torch.Tensor:
        """The curvature's magnitude (> 0)."""
        if hasattr(self, "raw_curvature"):
            return F.softplus(self.raw_curvature)
        return self.fixed_curvature

    @property
    def curvature(self) -> torch.Tensor:
        return self.sign * self.c

    @property
    def learnable_curvature(self) -> bool:
        return hasattr(self, "raw_curvature")

    def _sqrt_c(self, like: torch.Tensor) -> torch.Tensor:
        return self.c.to(like.dtype).sqrt()


class Euclidean(Manifold):
    """Flat R^H: exp and log the identity, translation p + b."""

    kind = "euclidean"

    def expmap0(self, u):
        return u

    def logmap0(self, p):
        return p

    def translate(self, p, b):
        return p + b

    def check_point(self, p, atol=1e-5):
        return bool(torch.isfinite(p).all())


# ----------------------------------------------------------------------------- Poincare ball


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor,
               rim: float | None = None) -> torch.Tensor:
    """Moebius addition x (+)_c y on the Poincare ball of curvature -c.

    Computed as a x + b y with per-row coefficients (few passes over the points); with `rim`,
    the result is scaled back to norm <= rim / sqrt(c) where rounding pushed it out (its norm
    is known from the coefficients, |a x + b y|^2 = a^2 |x|^2 + 2ab <x,y> + b^2 |y|^2)."""
    xy = (x * y).sum(-1, keepdim=True)
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1, keepdim=True)
    den = (1 + 2 * c * xy + c * c * x2 * y2).clamp_min(_eps(y))
    a = (1 + 2 * c * xy + c * y2) / den
    b = (1 - c * x2) / den
    if rim is not None:
        norm = (a * a * x2 + 2 * a * b * xy + b * b * y2).clamp_min(_eps(y) ** 2).sqrt()
        factor = (rim / (c.sqrt() * norm)).clamp_max(1.0)
        a, b = a * factor, b * factor
    return a * x + b * y


class PoincareBall(_CurvedMixin, Manifold):
    """The Poincare ball {|p| < 1/sqrt(c)} of curvature -c.

    exp_o(u) = tanh(sqrt(c)|u|) u / (sqrt(c)|u|), log_o its inverse, translation by Moebius
    addition. With `matvec=True` (the "poincare" type) `translate` first applies a learned
    Moebius matrix-vector product (set by the expert: `matrix`)."""

    kind = "hyperbolic"
    sign = -1.0

    def __init__(self, dim: int, curvature: float | None = None, *, learnable: bool = True,
                 kind: str = "hyperbolic"):
        super().__init__(dim)
        self.kind = kind
        self._init_curvature(curvature, learnable, -1.0)

    @staticmethod
    def _rim(p: torch.Tensor) -> float:
        """How close to the rim (in units of the radius) points may come."""
        return 1 - (1e-5 if p.dtype != torch.float64 else 1e-12)

    def expmap0(self, u):
        sqrt_c = self._sqrt_c(u)
        norm = _norm(u)
        # |exp_o(u)| = tanh(sqrt(c)|u|) / sqrt(c): clamped below the rim on the row norms
        return u * (torch.tanh(sqrt_c * norm).clamp_max(self._rim(u)) / (sqrt_c * norm))

    def logmap0(self, p):
        sqrt_c = self._sqrt_c(p)
        norm = _norm(p)
        scaled = (sqrt_c * norm).clamp_max(self._rim(p))
        return p * (torch.atanh(scaled) / (sqrt_c * norm))

    def mobius_matvec(self, matrix: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """M (x)_c p = tanh(|Mp|/|p| artanh(sqrt(c)|p|)) Mp / (sqrt(c)|Mp|)."""
        sqrt_c = self._sqrt_c(p)
        mp = p @ matrix.T
        p_norm, mp_norm = _norm(p), _norm(mp)
        scaled = (sqrt_c * p_norm).clamp_max(self._rim(p))
        radius = torch.tanh(mp_norm / p_norm * torch.atanh(scaled)).clamp_max(self._rim(p))
        return mp * (radius / (sqrt_c * mp_norm))

    def translate(self, p, b):
        return mobius_add(self.expmap0(b), p, self.c.to(p.dtype), rim=self._rim(p))

    def check_point(self, p, atol=1e-5):
        return bool((p.norm(dim=-1) < 1 / self._sqrt_c(p) + atol).all())


# ----------------------------------------------------------------------------- sphere


class Sphere(_CurvedMixin, Manifold):
    """The sphere |p| = 1/sqrt(c) in R^(H+1) (curvature +c), origin o = (1/sqrt(c), 0, ...).

    exp_o(u) = (cos(sqrt(c)|u|) / sqrt(c), sin(sqrt(c)|u|) u / (sqrt(c)|u|));
    log_o(p) = atan2(sqrt(c)|p_s|, sqrt(c) p_0) / sqrt(c) * p_s / |p_s| (p_s = p[1:]);
    injective for |u| < pi / sqrt(c). Translation: the rotation in the plane (o, b) by the
    angle sqrt(c)|b|."""

    kind = "spherical"
    sign = 1.0
    point_extra = 1

    def __init__(self, dim: int, curvature: float | None = None, *, learnable: bool = True):
        super().__init__(dim)
        self._init_curvature(curvature, learnable, 1.0)

    def expmap0(self, u):
        sqrt_c = self._sqrt_c(u)
        norm = _norm(u)
        theta = sqrt_c * norm
        return torch.cat([torch.cos(theta) / sqrt_c, torch.sin(theta) * u / (sqrt_c * norm)], -1)

    def logmap0(self, p):
        sqrt_c = self._sqrt_c(p)
        p0, ps = p[..., :1], p[..., 1:]
        norm = _norm(ps)
        theta = torch.atan2(sqrt_c * norm, sqrt_c * p0)
        return theta / sqrt_c * ps / norm

    def translate(self, p, b):
        sqrt_c = self._sqrt_c(p)
        b_norm = _norm(b)
        theta = sqrt_c * b_norm
        direction = b / b_norm                           # unit tangent (H,)
        p0, ps = p[..., :1], p[..., 1:]
        along = (ps * direction).sum(-1, keepdim=True)   # component of p on the b axis
        cos, sin = torch.cos(theta), torch.sin(theta)
        new0 = cos * p0 - sin * along                    # rotate (p0, along) by theta
        new_along = sin * p0 + cos * along
        return torch.cat([new0, ps + (new_along - along) * direction], -1)

    def check_point(self, p, atol=1e-5):
        return bool(torch.allclose(p.norm(dim=-1), 1 / self._sqrt_c(p).expand(p.shape[:-1]),
                                   atol=atol))


# ----------------------------------------------------------------------------- hyperboloid


def lorentz_inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """<x, y>_L = -x_0 y_0 + sum_i x_i y_i over the last axis (kept)."""
    prod = x * y
    return prod[..., 1:].sum(-1, keepdim=True) - prod[..., :1]


class Lorentz(_CurvedMixin, Manifold):
    """The hyperboloid <p, p>_L = -1/c, p_0 > 0, in R^(H+1) (curvature -c).

    exp_o(u) = (cosh(sqrt(c)|u|) / sqrt(c), sinh(sqrt(c)|u|) u / (sqrt(c)|u|));
    log_o(p) = asinh(sqrt(c)|p_s|) / sqrt(c) * p_s / |p_s| (stable far from o). Translation:
    the boost in the plane (o, b) with rapidity sqrt(c)|b|."""

    kind = "lorentzian"
    sign = -1.0
    point_extra = 1
    #: Largest sqrt(c)|u| sent through cosh / sinh (float32 overflows near 89).
    MAX_RAPIDITY = 15.0

    def __init__(self, dim: int, curvature: float | None = None, *, learnable: bool = True):
        super().__init__(dim)
        self._init_curvature(curvature, learnable, -1.0)

    def expmap0(self, u):
        sqrt_c = self._sqrt_c(u)
        norm = _norm(u)
        theta = (sqrt_c * norm).clamp_max(self.MAX_RAPIDITY)
        return torch.cat([torch.cosh(theta) / sqrt_c, torch.sinh(theta) * u / (sqrt_c * norm)],
                         -1)

    def logmap0(self, p):
        sqrt_c = self._sqrt_c(p)
        ps = p[..., 1:]
        norm = _norm(ps)
        return torch.asinh(sqrt_c * norm) / sqrt_c * ps / norm

    def translate(self, p, b):
        sqrt_c = self._sqrt_c(p)
        b_norm = _norm(b)
        theta = (sqrt_c * b_norm).clamp_max(self.MAX_RAPIDITY)
        direction = b / b_norm
        p0, ps = p[..., :1], p[..., 1:]
        along = (ps * direction).sum(-1, keepdim=True)
        cosh, sinh = torch.cosh(theta), torch.sinh(theta)
        new0 = cosh * p0 + sinh * along
        new_along = sinh * p0 + cosh * along
        return torch.cat([new0, ps + (new_along - along) * direction], -1)

    def check_point(self, p, atol=1e-5):
        inner = lorentz_inner(p, p)[..., 0]
        target = (-1 / self.c.to(p.dtype)).expand(inner.shape)
        return bool(torch.allclose(inner, target, atol=atol, rtol=1e-5) and (p[..., 0] > 0).all())


# ----------------------------------------------------------------------------- simplex


class Simplex(Manifold):
    """The open probability simplex in R^H: exp_o = softmax, log_o = centred log-ratio.

    log_o(exp_o(u)) = u - mean(u): the maps invert each other on zero-mean tangent vectors.
    Translation: a learned Markov transition p -> p A (A (H, H), rows softmax of a logits
    matrix set by the expert as `transition_logits`)."""

    kind = "simplex"

    def expmap0(self, u):
        return torch.softmax(u, -1)

    def logmap0(self, p):
        logp = p.clamp_min(torch.finfo(p.dtype).tiny).log()
        return logp - logp.mean(-1, keepdim=True)

    def translate(self, p, transition):
        return p @ transition

    def check_point(self, p, atol=1e-5):
        return bool((p > 0).all() and torch.allclose(p.sum(-1), torch.ones_like(p[..., 0]),
                                                     atol=atol))


# ----------------------------------------------------------------------------- complex


class ComplexSpace(Manifold):
    """C^(H/2): exp_o pairs coordinates (u_2k, u_2k+1) into u_2k + i u_2k+1, log_o unpairs;
    they are each other's inverse everywhere. The native map (complex linear + squared
    modReLU) is the expert's (`GeometricExpert`)."""

    kind = "complex"

    def __init__(self, dim: int):
        super().__init__(dim)
        if self.dim % 2:
            raise ValueError(f"a complex manifold needs an even dim (real, imaginary pairs), "
                             f"got dim={self.dim}")

    def expmap0(self, u):
        return torch.view_as_complex(u.reshape(*u.shape[:-1], self.dim // 2, 2).contiguous())

    def logmap0(self, p):
        return torch.view_as_real(p).reshape(*p.shape[:-1], self.dim)

    def translate(self, p, b):
        return p + b

    def check_point(self, p, atol=1e-5):
        return bool(p.is_complex() and torch.isfinite(torch.view_as_real(p)).all())


# ----------------------------------------------------------------------------- product


class ProductManifold(Manifold):
    """Poincare ball x sphere x euclidean, the tangent H split into (H // 3, H // 3, rest).

    `curvature` (negative) is the ball's; the sphere's is `sphere_curvature` (positive; by
    default the ball's magnitude).

    Points are the concatenation of the factors' coordinates (H + 1 wide: the sphere adds
    one); maps and translations act factor by factor. `curvature` is that of the ball
    factor; `curvatures` gives both."""

    kind = "product"
    point_extra = 1

    def __init__(self, dim: int, curvature: float | None = None, *, learnable: bool = True,
                 sphere_curvature: float | None = None):
        super().__init__(dim)
        if self.dim < 3:
            raise ValueError(f"a product manifold needs dim >= 3 (three factors), got "
                             f"dim={self.dim}")
        third = self.dim // 3
        self.split = (third, third, self.dim - 2 * third)
        self.ball = PoincareBall(third, curvature, learnable=learnable)
        if sphere_curvature is None and curvature is not None:
            sphere_curvature = abs(_check_real(curvature, name="curvature"))
        self.sphere = Sphere(third, sphere_curvature, learnable=learnable)
        self.flat = Euclidean(self.split[2])

    @property
    def curvature(self):
        return self.ball.curvature

    @property
    def curvatures(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ball's, sphere's) signed curvatures."""
        return self.ball.curvature, self.sphere.curvature

    @property
    def learnable_curvature(self):
        return self.ball.learnable_curvature

    def _factors(self):
        return (self.ball, self.sphere, self.flat)

    def _split_points(self, p):
        sizes = [m.point_dim for m in self._factors()]
        return p.split(sizes, -1)

    def expmap0(self, u):
        return torch.cat([m.expmap0(part) for m, part in
                          zip(self._factors(), u.split(self.split, -1), strict=True)], -1)

    def logmap0(self, p):
        return torch.cat([m.logmap0(part) for m, part in
                          zip(self._factors(), self._split_points(p), strict=True)], -1)

    def translate(self, p, b):
        return torch.cat([m.translate(part, bb) for m, part, bb in
                          zip(self._factors(), self._split_points(p), b.split(self.split, -1),
                              strict=True)], -1)

    def check_point(self, p, atol=1e-5):
        return all(m.check_point(part, atol) for m, part in
                   zip(self._factors(), self._split_points(p), strict=True))


def make_manifold(kind: str, dim: int, curvature: float | None = None, *,
                  learnable: bool | None = None) -> Manifold:
    """A manifold of one of the eight `MANIFOLDS` types with tangent dimension `dim`.

    `curvature` is signed (negative for hyperbolic, poincare, lorentzian and product, positive
    for spherical; a nonzero value for a curvature-free type is an error). `learnable`
    defaults to True except for "poincare" (fixed curvature)."""
    if kind not in MANIFOLDS:
        raise ValueError(f"unknown manifold {kind!r}; expected one of {', '.join(MANIFOLDS)}")
    if kind in ("euclidean", "simplex", "complex"):
        if curvature is not None and curvature != 0:
            raise ValueError(f"a {kind} manifold has no curvature, got curvature={curvature}")
        return {"euclidean": Euclidean, "simplex": Simplex, "complex": ComplexSpace}[kind](dim)
    learnable = kind != "poincare" if learnable is None else learnable
    if kind in ("hyperbolic", "poincare"):
        return PoincareBall(dim, curvature, learnable=learnable, kind=kind)
    if kind == "spherical":
        return Sphere(dim, curvature, learnable=learnable)
    if kind == "lorentzian":
        return Lorentz(dim, curvature, learnable=learnable)
    return ProductManifold(dim, curvature, learnable=learnable)


# ----------------------------------------------------------------------------- the expert


class _Float32:
    """Autocast off and x promoted to at least float32 (float64 stays)."""

    def __init__(self, x: torch.Tensor):
        self.device_type = x.device.type
        self.dtype = torch.promote_types(x.dtype, torch.float32)

    def __enter__(self):
        self._ctx = torch.autocast(self.device_type, enabled=False)
        self._ctx.__enter__()
        return self.dtype

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def squash_tangent(u: torch.Tensor, manifold: _CurvedMixin, radius: float) -> torch.Tensor:
    """u * r tanh(|u| / r) / |u| with r = radius / sqrt(c): the tangent vector smoothly
    squashed into the ball sqrt(c)|u| < radius (monotone in |u|, so injective, and the
    identity to first order near 0; r grows without bound as c -> 0)."""
    norm = _norm(u)
    r = radius / manifold._sqrt_c(u)
    return u * (r * torch.tanh(norm / r) / norm)


class GeometricExpert(nn.Module):
    """One expert: x (N, C) -> W_out act(log_o(T(exp_o(W_in x)))) (N, C) (module docstring).

    Args:
        dim: C, the model width.
        hidden: H, the tangent width (even for "complex", >= 3 for "product").
        kind: one of MANIFOLDS.
        curvature: signed initial curvature (None: DEFAULT_CURVATURE of the type).
        complex_parameters: "pairs" (real tensors with a trailing axis of 2) or "native"
            (complex64 parameters) for the complex expert's weights.
        tangent_radius: 0 (off), or R > 0: a curved factor's tangent vector u is first
            squashed smoothly into sqrt(c)|u| < R (`squash_tangent`), so that the maps stay
            where they are informative: on the sphere exp_o is injective only for
            sqrt(c)|u| < pi, on the ball float32 reaches the rim (and the norm's gradient
            vanishes) beyond sqrt(c)|u| = artanh(1 - 1e-5) = 6.1.
    """

    def __init__(self, dim: int, hidden: int, kind: str, curvature: float | None = None, *,
                 complex_parameters: str = "pairs", tangent_radius: float = 0.0):
        super().__init__()
        tangent_radius = _check_real(tangent_radius, name="tangent_radius")
        if tangent_radius < 0:
            raise ValueError(f"tangent_radius must be >= 0 (0: off), got {tangent_radius}")
        self.tangent_radius = tangent_radius
        dim, hidden = _check_dim(dim, name="dim"), _check_dim(hidden, name="hidden")
        if complex_parameters not in COMPLEX_STORAGES:
            raise ValueError(f"complex_parameters must be one of {', '.join(COMPLEX_STORAGES)}, "
                             f"got {complex_parameters!r}")
        self.kind = kind
        self.manifold = make_manifold(kind, hidden, curvature)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.bias = nn.Parameter(torch.randn(hidden) * 0.02)  # b: the translation (tangent)
        if kind == "poincare":
            self.matrix = nn.Parameter(torch.eye(hidden) + torch.randn(hidden, hidden) * 0.02)
        elif kind == "simplex":
            # near the identity transition: logits 4 on the diagonal
            self.transition_logits = nn.Parameter(4 * torch.eye(hidden)
                                                  + torch.randn(hidden, hidden) * 0.02)
        elif kind == "complex":
            half = hidden // 2
            weight = torch.randn(half, half, 2) / math.sqrt(2 * half)
            weight[..., 0] += torch.eye(half)
            if complex_parameters == "native":
                self.weight = nn.Parameter(torch.view_as_complex(weight.contiguous()))
            else:
                self.weight = nn.Parameter(weight)
            self.modrelu_bias = nn.Parameter(torch.zeros(half))

    def complex_weight(self) -> torch.Tensor:
        """The complex expert's weight as a complex tensor (H/2, H/2)."""
        w = self.weight
        return w if w.is_complex() else torch.view_as_complex(w)

    def native(self, p: torch.Tensor) -> torch.Tensor:
        """T: the geometry's own operation on points p (float32 or float64)."""
        b = self.bias.to(p.real.dtype)
        m = self.manifold
        if self.kind == "poincare":
            return m.translate(m.mobius_matvec(self.matrix.to(p.dtype), p), b)
        if self.kind == "simplex":
            return m.translate(p, torch.softmax(self.transition_logits.to(p.dtype), -1))
        if self.kind == "complex":
            w = self.complex_weight()
            w = w.to(p.dtype)
            z = p @ w.T + m.expmap0(b)
            # squared modReLU, (|z| + beta)_+^2 z / |z|: the magnitude's ReLU^2 (the other
            # experts' activation), the phase kept. (Plain modReLU with beta = 0 is the
            # identity: the expert started as a linear map.)
            magnitude = z.abs().clamp_min(_eps(p.real))
            scale = F.relu(magnitude + self.modrelu_bias.to(magnitude.dtype)).square() / magnitude
            return z * scale
        return m.translate(p, b)

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        """u with every curved factor squashed into sqrt(c)|u| < tangent_radius (0: u)."""
        m, radius = self.manifold, self.tangent_radius
        if not radius:
            return u
        if isinstance(m, ProductManifold):
            ball, sphere, flat = u.split(m.split, -1)
            return torch.cat([squash_tangent(ball, m.ball, radius),
                              squash_tangent(sphere, m.sphere, radius), flat], -1)
        if isinstance(m, _CurvedMixin):
            return squash_tangent(u, m, radius)
        return u

    def tangent(self, u: torch.Tensor) -> torch.Tensor:
        """log_o(T(exp_o(u))) for tangent vectors u (N, H) (squashed first with a
        tangent_radius), in u's dtype (no autocast)."""
        return self.manifold.logmap0(self.native(self.manifold.expmap0(self.squash(u))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C) -> (N, C), in x's dtype (the geometry in at least float32)."""
        u = self.up(x)
        with _Float32(u) as dtype:
            v = self.tangent(u.to(dtype))
            if self.kind != "complex":
                v = F.relu(v).square()  # relu^2, as the GPT's feed-forward
        return self.down(v.to(x.dtype))

    def curvature_parameters(self) -> list[str]:
        """Names (relative to this module) of the learnable curvature parameters."""
        return [n for n, _ in self.named_parameters() if n.endswith("raw_curvature")]

    def curvature_vector(self) -> torch.Tensor:
        """(2,) float32 on the expert's device, detached: its signed curvature(s), zero-padded
        (the sphere factor's second for "product")."""
        m = self.manifold
        zero = torch.zeros((), device=self.up.weight.device)
        if isinstance(m, ProductManifold):
            values = list(m.curvatures)
        elif isinstance(m, _CurvedMixin):
            values = [m.curvature, zero]
        else:
            values = [zero, zero]
        return torch.stack([v.detach().float().to(zero.device) for v in values])

    def curvatures(self) -> list[float]:
        """The expert's signed curvatures (two for "product", none for flat types)."""
        m = self.manifold
        if isinstance(m, ProductManifold):
            return [float(k.detach()) for k in m.curvatures]
        if isinstance(m, _CurvedMixin):
            return [float(m.curvature.detach())]
        return []
