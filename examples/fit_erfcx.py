"""Fit the polynomial behind ``nptransformer.backend.erfcx``, and print its coefficients.

    python examples/fit_erfcx.py

erfcx(z) = exp(z^2) erfc(z) falls smoothly from 1 at z = 0 to about
1 / (z sqrt(pi)) for large z. In s = 1 / (1 + P z) it is close to a low
polynomial, so a Chebyshev least-squares fit in s over [0, Z_MAX] (relative
weights, math.erfc as the reference) converges fast; converted to monomials
in u, the affine image of s on [-1, 1], it is evaluated by Horner's rule.
Prints the maximum relative error on a fine grid and the coefficients
(constant term first) that backend.py holds.
"""

import math

import numpy as np
from numpy.polynomial import chebyshev, polynomial

P, Z_MAX, DEGREE = 0.35, 10.5, 12


def erfcx_reference(z: np.ndarray) -> np.ndarray:
    return np.array([math.erfc(v) * math.exp(v * v) for v in z])


def fit() -> tuple[np.ndarray, float]:
    s_min = 1.0 / (1.0 + P * Z_MAX)
    u = np.cos(np.linspace(0.0, np.pi, 4000))  # Chebyshev-spaced: no Runge wiggles at the ends
    s = (u + 1.0) / 2.0 * (1.0 - s_min) + s_min
    g = erfcx_reference((1.0 / s - 1.0) / P)
    coef = chebyshev.cheb2poly(chebyshev.chebfit(u, g, DEGREE, w=1.0 / g))
    z = np.linspace(0.0, Z_MAX, 200_001)
    s = 1.0 / (1.0 + P * z)
    approx = polynomial.polyval(2.0 * (s - s_min) / (1.0 - s_min) - 1.0, coef)
    want = erfcx_reference(z)
    return coef, float(np.max(np.abs(approx - want) / want))


if __name__ == "__main__":
    coef, err = fit()
    print(f"P = {P}, Z_MAX = {Z_MAX}, degree {DEGREE}: max relative error {err:.2e}")
    print("S_MIN =", repr(1.0 / (1.0 + P * Z_MAX)))
    print("COEFFICIENTS = (" + ", ".join(repr(float(c)) for c in coef) + ")")
