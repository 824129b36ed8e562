"""Vectorised toy physics behind :mod:`mlaas4hep_lab.data.datasets`.

Everything here works on whole numpy arrays (one entry per event, or per object with an
event index); there is no per-event Python loop. The models are deliberately simple but
keep the correlations a physicist expects: visible and collinear masses come from boosted
two-body decays, the missing transverse momentum is the sum of the neutrinos plus a
resolution term, jets recoil against the boson, and derived ``DER_`` quantities are computed
from the generated four-vectors exactly as the ATLAS Higgs machine-learning challenge
defines them. The ttH-like NanoAOD events are generated in :mod:`mlaas4hep_lab.data._physics_tth`.
"""

from __future__ import annotations

import numpy as np

MISSING = np.float32(-999.0)

# ---------------------------------------------------------------------------------------------
# kinematics


def cartesian(pt, eta, phi, m=0.0):
    """(E, px, py, pz) of objects given as (pt, eta, phi, m)."""
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px * px + py * py + pz * pz + m * m)
    return e, px, py, pz


def polar(px, py, pz):
    """(pt, eta, phi) of momenta given as (px, py, pz)."""
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-9))
    return pt, eta, np.arctan2(py, px)


def inv_mass(e, px, py, pz):
    return np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))


def delta_phi(a, b):
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def delta_r(eta1, phi1, eta2, phi2):
    return np.hypot(eta1 - eta2, delta_phi(phi1, phi2))


def transverse_mass(pt1, phi1, pt2, phi2):
    return np.sqrt(np.maximum(2.0 * pt1 * pt2 * (1.0 - np.cos(phi1 - phi2)), 0.0))


def boson(rng, mass, ptx, pty, rap_sigma):
    """Four-vector of a particle of ``mass`` with transverse momentum (ptx, pty) and a gaussian rapidity."""
    y = rng.normal(0.0, rap_sigma, mass.shape)
    mt = np.sqrt(mass * mass + ptx * ptx + pty * pty)
    return mt * np.cosh(y), ptx, pty, mt * np.sinh(y)


def two_body(rng, parent):
    """Isotropic decay of ``parent`` (E, px, py, pz) into two massless daughters, in the lab frame."""
    e, px, py, pz = parent
    m = inv_mass(e, px, py, pz)
    n = m.shape[0]
    cos_t = rng.uniform(-1.0, 1.0, n)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    phi = rng.uniform(-np.pi, np.pi, n)
    p = m / 2.0
    kx, ky, kz = p * sin_t * np.cos(phi), p * sin_t * np.sin(phi), p * cos_t
    bx, by, bz = px / e, py / e, pz / e
    b2 = np.maximum(bx * bx + by * by + bz * bz, 1e-12)
    gamma = 1.0 / np.sqrt(np.maximum(1.0 - b2, 1e-12))
    g2 = (gamma - 1.0) / b2
    out = []
    for sign in (1.0, -1.0):
        qx, qy, qz = sign * kx, sign * ky, sign * kz
        bp = bx * qx + by * qy + bz * qz
        out.append((
            gamma * (p + bp),
            qx + g2 * bp * bx + gamma * bx * p,
            qy + g2 * bp * by + gamma * by * p,
            qz + g2 * bp * bz + gamma * bz * p,
        ))
    return out[0], out[1]


def _scale(v, x):
    return tuple(c * x for c in v)


def _breit_wigner(rng, n, mass, width, lo, hi):
    return np.clip(mass + 0.5 * width * rng.standard_cauchy(n), lo, hi)


# ---------------------------------------------------------------------------------------------
# Higgs challenge (H -> tau tau, one leptonic and one hadronic tau)

HIGGS_FLOAT_BRANCHES = [
    "DER_mass_MMC", "DER_mass_transverse_met_lep", "DER_mass_vis", "DER_pt_h",
    "DER_deltaeta_jet_jet", "DER_mass_jet_jet", "DER_prodeta_jet_jet", "DER_deltar_tau_lep",
    "DER_pt_tot", "DER_sum_pt", "DER_pt_ratio_lep_tau", "DER_met_phi_centrality",
    "DER_lep_eta_centrality", "PRI_tau_pt", "PRI_tau_eta", "PRI_tau_phi", "PRI_lep_pt",
    "PRI_lep_eta", "PRI_lep_phi", "PRI_met", "PRI_met_phi", "PRI_met_sumet",
]
HIGGS_JET_BRANCHES = [
    "PRI_jet_leading_pt", "PRI_jet_leading_eta", "PRI_jet_leading_phi",
    "PRI_jet_subleading_pt", "PRI_jet_subleading_eta", "PRI_jet_subleading_phi", "PRI_jet_all_pt",
]
HIGGS_BRANCHES: dict[str, str] = {"EventId": "int64"}
HIGGS_BRANCHES.update({b: "float32" for b in HIGGS_FLOAT_BRANCHES})
HIGGS_BRANCHES["PRI_jet_num"] = "int32"
HIGGS_BRANCHES.update({b: "float32" for b in HIGGS_JET_BRANCHES})
HIGGS_BRANCHES["Weight"] = "float32"

# processes: name, class, fraction inside the class, jet multiplicity probabilities (0,1,2,>=3)
# and raw weights (log-uniform in [lo, hi]); weights are normalised afterwards to the
# challenge's totals (sum of signal weights 691.99, of background 410999.85 for 250k events).
HIGGS_PROCESSES = {
    1: [("ggH", 0.80, (0.40, 0.33, 0.17, 0.10), (0.0016, 0.0018)),
        ("VBF", 0.20, (0.03, 0.17, 0.47, 0.33), (0.0027, 0.0027))],
    0: [("Ztautau", 0.62, (0.52, 0.31, 0.12, 0.05), (0.5, 2.0)),
        ("Wjets", 0.26, (0.50, 0.31, 0.13, 0.06), (2.0, 5.0)),
        ("ttbar", 0.12, (0.04, 0.14, 0.36, 0.46), (0.002, 0.5))],
}
CHALLENGE_SUM_WEIGHTS = {1: 691.988607712, 0: 410999.847322}
CHALLENGE_EVENTS = 250_000


def _expected_raw_weight(label):
    total = 0.0
    for _, frac, _, (lo, hi) in HIGGS_PROCESSES[label]:
        total += frac * (lo if lo == hi else (hi - lo) / np.log(hi / lo))
    return total


def higgs_weight_scale(label, n_class, n_total):
    """Factor that brings the raw weights of ``n_class`` events to the challenge's totals."""
    target = CHALLENGE_SUM_WEIGHTS[label] * n_total / CHALLENGE_EVENTS
    return target / (max(n_class, 1) * _expected_raw_weight(label))


def _higgs_candidates(rng, n, process, jet_probs):
    """Generate ``n`` candidate events of one process; returns a dict and the selection mask."""
    # jets: up to three kept jets, more counted only in PRI_jet_all_pt
    njet = rng.choice(4, size=n, p=jet_probs)
    scale = {"VBF": 55.0, "ttbar": 50.0}.get(process, 32.0)
    jpt = 30.0 + rng.exponential(scale, (n, 3))
    jeta = np.clip(rng.normal(0.0, 1.8, (n, 3)), -4.5, 4.5)
    jphi = rng.uniform(-np.pi, np.pi, (n, 3))
    if process == "VBF":  # two tagging jets, forward, in opposite hemispheres
        side = rng.choice([-1.0, 1.0], n)
        jeta[:, 0] = side * np.clip(np.abs(rng.normal(2.0, 1.0, n)), 0.0, 4.7)
        jeta[:, 1] = -side * np.clip(np.abs(rng.normal(2.0, 1.0, n)), 0.0, 4.7)
    valid = np.arange(3)[None, :] < njet[:, None]
    order = np.argsort(np.where(valid, -jpt, np.inf), axis=1)
    jpt, jeta, jphi = (np.take_along_axis(a, order, axis=1) for a in (jpt, jeta, jphi))
    n_extra = np.where(njet == 3, rng.geometric(0.6, n) - 1, 0)
    extra_pt = n_extra * (30.0 + rng.exponential(15.0, n))
    jx = np.where(valid, jpt * np.cos(jphi), 0.0).sum(axis=1)
    jy = np.where(valid, jpt * np.sin(jphi), 0.0).sum(axis=1)
    all_pt = np.where(valid, jpt, 0.0).sum(axis=1) + extra_pt
    ex_phi = rng.uniform(-np.pi, np.pi, n)
    jx, jy = jx + extra_pt * np.cos(ex_phi), jy + extra_pt * np.sin(ex_phi)
    recoil_x, recoil_y = -jx + rng.normal(0.0, 12.0, n), -jy + rng.normal(0.0, 12.0, n)

    nus = []
    if process in ("ggH", "VBF", "Ztautau"):
        mass = np.full(n, 125.0) if process != "Ztautau" else _breit_wigner(rng, n, 91.19, 2.5, 60.0, 130.0)
        tau_h, tau_l = two_body(rng, boson(rng, mass, recoil_x, recoil_y, 1.1))
        x_h = rng.uniform(0.15, 1.0, n)
        x_l = rng.beta(1.4, 2.2, n)
        had, lep = _scale(tau_h, x_h), _scale(tau_l, x_l)
        nus = [_scale(tau_h, 1.0 - x_h), _scale(tau_l, 1.0 - x_l)]
    elif process == "Wjets":  # real lepton and neutrino from the W, hadronic tau faked by a jet
        fpt = 20.0 + rng.exponential(22.0, n)
        fphi = np.arctan2(recoil_y, recoil_x) + np.pi + rng.normal(0.0, 1.6, n)
        had = cartesian(fpt, np.clip(rng.normal(0.0, 1.3, n), -2.5, 2.5), fphi)
        w = boson(rng, _breit_wigner(rng, n, 80.4, 2.1, 60.0, 110.0),
                  recoil_x - had[1], recoil_y - had[2], 1.0)
        lep, nu = two_body(rng, w)
        nus = [nu]
    else:  # ttbar: W1 -> l nu, W2 -> tau nu, tau -> hadrons nu
        kx, ky = rng.normal(0, 60.0, n), rng.normal(0, 60.0, n)  # the two W share the recoil
        w1 = boson(rng, _breit_wigner(rng, n, 80.4, 2.1, 60.0, 110.0), recoil_x / 2 + kx, recoil_y / 2 + ky, 1.0)
        w2 = boson(rng, _breit_wigner(rng, n, 80.4, 2.1, 60.0, 110.0), recoil_x / 2 - kx, recoil_y / 2 - ky, 1.0)
        lep, nu1 = two_body(rng, w1)
        tau, nu2 = two_body(rng, w2)
        x_h = rng.uniform(0.15, 1.0, n)
        had = _scale(tau, x_h)
        nus = [nu1, nu2, _scale(tau, 1.0 - x_h)]

    had = _scale(had, np.clip(rng.normal(1.0, 0.15, n), 0.5, 1.5))  # tau energy scale resolution
    m_true = inv_mass(*(h + lp + sum(v[i] for v in nus) for i, (h, lp) in enumerate(zip(had, lep, strict=True))))
    tau_pt, tau_eta, tau_phi = polar(*had[1:])
    lep_pt, lep_eta, lep_phi = polar(*lep[1:])
    ue = rng.gamma(3.0, 35.0, n)
    sumet = tau_pt + lep_pt + all_pt + ue
    sigma = 0.8 * np.sqrt(sumet)
    metx = sum(v[1] for v in nus) + rng.normal(0.0, 1.0, n) * sigma
    mety = sum(v[2] for v in nus) + rng.normal(0.0, 1.0, n) * sigma
    # decisions on float32-rounded values (what the file stores): numpy's vectorised sin, exp, arctan2, ...
    # differ by a few ulps between CPUs (AVX-512 or not), amplified up to 1e-12 by the kinematics; compared
    # in float64, an event at a threshold could be kept on one machine and not on another, and the
    # rejection batches after it differ: the same seed must write the same files everywhere
    keep = (_f32(tau_pt) > 20.0) & (np.abs(_f32(tau_eta)) < 2.5) & (_f32(lep_pt) > 20.0) & (np.abs(_f32(lep_eta)) < 2.5)
    # analysis preselection against W+jets: events with a large transverse mass are prescaled
    mt = transverse_mass(lep_pt, lep_phi, np.hypot(metx, mety), np.arctan2(mety, metx))
    keep &= rng.uniform(size=n) < np.exp(-np.maximum(mt - 50.0, 0.0) / 30.0)
    return dict(
        njet=njet, jpt=jpt, jeta=jeta, jphi=jphi, all_pt=all_pt, had=had, lep=lep,
        tau_pt=tau_pt, tau_eta=tau_eta, tau_phi=tau_phi, lep_pt=lep_pt, lep_eta=lep_eta,
        lep_phi=lep_phi, metx=metx, mety=mety, sumet=sumet, m_true=m_true,
    ), keep


def _f32(x):
    """``x`` rounded to float32, as float64: equal on every CPU unless a value lies within ~1e-12 of a
    float32 rounding boundary (where the float64 one lay within that of the threshold itself)."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def _take(ev, idx):
    return {k: (tuple(c[idx] for c in v) if isinstance(v, tuple) else v[idx]) for k, v in ev.items()}


def _concat(parts):
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return {k: (tuple(np.concatenate([p[k][i] for p in parts]) for i in range(len(first[k])))
                if isinstance(first[k], tuple) else np.concatenate([p[k] for p in parts]))
            for k in first}


def _select(rng, n, make):
    """Call ``make(rng, m)`` on batches until ``n`` events pass its selection (vectorised rejection)."""
    parts, have, eff = [], 0, 0.35
    while have < n:
        m = int((n - have) / eff * 1.15) + 64
        ev, keep = make(rng, m)
        eff = max(keep.mean(), 0.02)
        idx = np.flatnonzero(keep)[: n - have]
        parts.append(_take(ev, idx))
        have += idx.size
    return _concat(parts)


def _mmc(rng, ev, met_phi):
    """A missing-mass-calculator-like estimate (-999 where the fit fails) and the visible mass."""
    had, lep = ev["had"], ev["lep"]
    det = had[1] * lep[2] - had[2] * lep[1]
    det = np.where(np.abs(det) < 1e-6, 1e-6, det)
    a_h = (ev["metx"] * lep[2] - ev["mety"] * lep[1]) / det
    a_l = (had[1] * ev["mety"] - had[2] * ev["metx"]) / det
    m_vis = inv_mass(*(h + lp for h, lp in zip(had, lep, strict=True)))
    # float32-rounded (see _higgs_candidates): they decide `collinear` and feed m_col, stored as float32 anyway
    a_h, a_l = _f32(a_h), _f32(a_l)
    collinear = (a_h > -0.05) & (a_l > -0.05) & (a_h < 8.0) & (a_l < 8.0)
    m_col = m_vis * np.sqrt(np.clip((1 + a_h) * (1 + a_l), 0.9, None))
    # the fitted mass: near the true mass of the decay products, wider when the collinear
    # solution is unphysical; in some events the collinear value itself
    res = np.where(collinear, 0.20, 0.30)
    fitted = ev["m_true"] * np.exp(rng.normal(0.0, 1.0, m_vis.shape) * res)
    mmc = np.where(rng.uniform(size=m_vis.shape) < 0.3, m_col, fitted)
    # the likelihood fit fails more often when the collinear solution is far from physical
    badness = np.clip(-np.minimum(a_h, a_l), 0.0, 3.0)
    p_fail = np.where(collinear, 0.02, 0.08 + 0.15 * badness)
    p_fail = p_fail + 0.10 * (np.abs(_f32(delta_phi(met_phi, ev["lep_phi"]))) < 0.6) * (~collinear)
    failed = rng.uniform(size=m_vis.shape) < p_fail
    return np.where(failed, MISSING, np.clip(mmc, 10.0, 1500.0)), m_vis


def higgs_block(rng, n, label):
    """``n`` events of class ``label`` (1 signal, 0 background): dict branch -> array (no EventId)."""
    procs = HIGGS_PROCESSES[label]
    which = rng.choice(len(procs), size=n, p=[p[1] for p in procs])
    blocks, weights = [], []
    for i, (name, _, jet_probs, (lo, hi)) in enumerate(procs):
        k = int((which == i).sum())
        if k == 0:
            continue
        blocks.append(_select(rng, k, lambda r, m, name=name, jp=jet_probs: _higgs_candidates(r, m, name, jp)))
        weights.append(np.exp(rng.uniform(np.log(lo), np.log(hi), k)) if lo != hi else np.full(k, lo))
    perm = rng.permutation(n)
    ev = _take(_concat(blocks), perm)
    weight = np.concatenate(weights)[perm]
    return _higgs_features(rng, ev, weight)


def _higgs_features(rng, ev, weight):
    njet = ev["njet"]
    tau_pt, tau_eta, tau_phi = ev["tau_pt"], ev["tau_eta"], ev["tau_phi"]
    lep_pt, lep_eta, lep_phi = ev["lep_pt"], ev["lep_eta"], ev["lep_phi"]
    met = np.hypot(ev["metx"], ev["mety"])
    met_phi = np.arctan2(ev["mety"], ev["metx"])
    mmc, m_vis = _mmc(rng, ev, met_phi)
    j1pt, j1eta, j1phi = ev["jpt"][:, 0], ev["jeta"][:, 0], ev["jphi"][:, 0]
    j2pt, j2eta, j2phi = ev["jpt"][:, 1], ev["jeta"][:, 1], ev["jphi"][:, 1]
    has1, has2 = njet >= 1, njet >= 2
    hx = tau_pt * np.cos(tau_phi) + lep_pt * np.cos(lep_phi) + ev["metx"]
    hy = tau_pt * np.sin(tau_phi) + lep_pt * np.sin(lep_phi) + ev["mety"]
    totx = hx + has1 * j1pt * np.cos(j1phi) + has2 * j2pt * np.cos(j2phi)
    toty = hy + has1 * j1pt * np.sin(j1phi) + has2 * j2pt * np.sin(j2phi)
    e1, e2 = cartesian(j1pt, j1eta, j1phi), cartesian(j2pt, j2eta, j2phi)
    mjj = inv_mass(*(a + b for a, b in zip(e1, e2, strict=True)))
    deta = np.abs(j1eta - j2eta)
    lep_cent = np.exp(-4.0 / np.maximum(deta, 1e-3) ** 2 * (lep_eta - 0.5 * (j1eta + j2eta)) ** 2)
    s = np.sign(np.sin(tau_phi - lep_phi))
    a, b = np.sin(met_phi - lep_phi) * s, np.sin(tau_phi - met_phi) * s
    met_cent = (a + b) / np.sqrt(np.maximum(a * a + b * b, 1e-12))

    def only(mask, x):
        return np.where(mask, x, MISSING)

    out = {
        "DER_mass_MMC": mmc,
        "DER_mass_transverse_met_lep": transverse_mass(lep_pt, lep_phi, met, met_phi),
        "DER_mass_vis": m_vis,
        "DER_pt_h": np.hypot(hx, hy),
        "DER_deltaeta_jet_jet": only(has2, deta),
        "DER_mass_jet_jet": only(has2, mjj),
        "DER_prodeta_jet_jet": only(has2, j1eta * j2eta),
        "DER_deltar_tau_lep": delta_r(tau_eta, tau_phi, lep_eta, lep_phi),
        "DER_pt_tot": np.hypot(totx, toty),
        "DER_sum_pt": tau_pt + lep_pt + ev["all_pt"],
        "DER_pt_ratio_lep_tau": lep_pt / tau_pt,
        "DER_met_phi_centrality": met_cent,
        "DER_lep_eta_centrality": only(has2, lep_cent),
        "PRI_tau_pt": tau_pt, "PRI_tau_eta": tau_eta, "PRI_tau_phi": tau_phi,
        "PRI_lep_pt": lep_pt, "PRI_lep_eta": lep_eta, "PRI_lep_phi": lep_phi,
        "PRI_met": met, "PRI_met_phi": met_phi, "PRI_met_sumet": ev["sumet"],
        "PRI_jet_num": njet.astype(np.int32),
        "PRI_jet_leading_pt": only(has1, j1pt),
        "PRI_jet_leading_eta": only(has1, j1eta),
        "PRI_jet_leading_phi": only(has1, j1phi),
        "PRI_jet_subleading_pt": only(has2, j2pt),
        "PRI_jet_subleading_eta": only(has2, j2eta),
        "PRI_jet_subleading_phi": only(has2, j2phi),
        "PRI_jet_all_pt": ev["all_pt"],
        "Weight": weight,
    }
    return {k: np.asarray(v, dtype=HIGGS_BRANCHES[k]) for k, v in out.items()}
