"""Vectorised toy physics of the ttH-like NanoAOD events behind :mod:`mlaas4hep_lab.data.datasets`.

Two generators: :func:`tth_block`, ttH(bb) against tt+jets with objects drawn per class, and
:func:`tth_tasks_block`, ttH(bb) / tt+bb / tt+light built from the top quarks' decays, with the
generator's truth (``Gen*``). Both work on whole numpy arrays, as the Higgs generation and the shared
kinematics in :mod:`mlaas4hep_lab.data._physics` do.
"""

from __future__ import annotations

import numpy as np

from mlaas4hep_lab.data._physics import _select, boson, cartesian, delta_phi, delta_r, inv_mass, polar

# ---------------------------------------------------------------------------------------------
# ttH(bb)-like NanoAOD events (signal) against tt+jets (background)

TTH_FLAT: dict[str, str] = {
    "run": "int32", "luminosityBlock": "int32", "event": "int64", "bunchCrossing": "int16",
    "MET_pt": "float32", "MET_phi": "float32", "MET_sumEt": "float32",
    "PV_npvs": "int32", "PV_npvsGood": "uint8", "PV_z": "float32", "HT": "float32",
    "nLepton_tight": "int32", "fixedGridRhoFastjet": "float32", "genWeight": "float32",
    "Pileup_nTrueInt": "float32", "btagWeight_DeepFlavB": "float64", "L1PreFiringWeight_Nom": "float64",
    "LHE_HT": "float64", "Flag_goodVertices": "bool", "Flag_METFilters": "bool",
    "HLT_IsoMu24": "bool", "HLT_Ele32_WPTight_Gsf": "bool",
}
TTH_COLLECTIONS: dict[str, dict[str, str]] = {
    "Jet": {"pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32",
            "btagDeepFlavB": "float32", "qgl": "float32", "jetId": "int32", "puId": "int32",
            "hadronFlavour": "int32", "area": "float32", "chEmEF": "float32", "neEmEF": "float32",
            "nConstituents": "uint8"},
    "Electron": {"pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32",
                 "charge": "int32", "pfRelIso03_all": "float32", "dxy": "float32", "cutBased": "int32"},
    "Muon": {"pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32",
             "charge": "int32", "pfRelIso04_all": "float32", "tightId": "bool", "dxy": "float32"},
    "Tau": {"pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32",
            "charge": "int32", "decayMode": "int32", "idDeepTau2017v2p1VSjet": "uint8"},
    "Photon": {"pt": "float32", "eta": "float32", "phi": "float32", "r9": "float32",
               "sieie": "float32", "cutBased": "int32"},
    "FatJet": {"pt": "float32", "eta": "float32", "phi": "float32", "mass": "float32",
               "msoftdrop": "float32", "tau1": "float32", "tau2": "float32", "btagDDBvLV2": "float32"},
}
MAX_OBJECTS = 12


def _counts(rng, n, probs):
    return rng.choice(len(probs), size=n, p=probs)


def _objects(rng, counts, pt_min, pt_scale, eta_sigma, eta_max):
    """Flat (pt, eta, phi) of ``counts`` objects per event, sorted by decreasing pt inside each event."""
    total = int(counts.sum())
    owner = np.repeat(np.arange(counts.shape[0]), counts)
    pt = pt_min + rng.exponential(pt_scale, total)
    eta = np.clip(rng.normal(0.0, eta_sigma, total), -eta_max, eta_max)
    phi = rng.uniform(-np.pi, np.pi, total)
    return owner, pt, eta, phi


def _sort_within(owner, pt, *others):
    order = np.lexsort((-pt, owner))
    return (pt[order],) + tuple(o[order] for o in others)


def _per_event_any(owner, cond, n):
    return np.bincount(owner, weights=cond.astype(np.float64), minlength=n) > 0


def _jet_tags(rng, flav):
    """b-tag and quark-gluon scores of jets of hadron flavour ``flav`` (5 b, 4 c, 0 light)."""
    m = flav.shape[0]
    is_b = flav == 5
    btag = np.where(is_b, rng.beta(2.5, 1.0, m), np.where(flav == 4, rng.beta(1.2, 3.0, m), rng.beta(0.5, 6.0, m)))
    qgl = np.where(is_b, rng.beta(1.2, 1.6, m), rng.beta(1.6, 1.3, m))
    return btag, qgl


def _jet_fields(rng, pt, eta, phi, flav, btag, qgl):
    """The ``Jet`` fields of jets already sorted inside each event."""
    m = pt.shape[0]
    return {
        "pt": pt, "eta": eta, "phi": phi, "mass": pt * rng.uniform(0.06, 0.2, m), "btagDeepFlavB": btag,
        "qgl": qgl, "jetId": rng.choice([2, 6], size=m, p=[0.04, 0.96]),
        "puId": np.where(pt > 50.0, 7, rng.choice([0, 4, 6, 7], size=m, p=[0.1, 0.1, 0.2, 0.6])),
        "hadronFlavour": flav, "area": rng.normal(0.50, 0.03, m), "chEmEF": rng.beta(1.0, 12.0, m),
        "neEmEF": rng.beta(2.0, 8.0, m), "nConstituents": np.clip(4 + rng.poisson(pt / 8.0 + 8.0), 1, 255),
    }


def _leptons(rng, n, probs, mass, pt_scale):
    counts = _counts(rng, n, probs)
    own, lpt, leta, lphi = _objects(rng, counts, 10.0, pt_scale, 1.1, 2.4)
    lpt, leta, lphi = _sort_within(own, lpt, leta, lphi)
    k = lpt.shape[0]
    return counts, own, {"pt": lpt, "eta": leta, "phi": lphi, "mass": np.full(k, mass),
                         "charge": rng.choice([-1, 1], size=k)}


def _electrons(rng, n, probs):
    """Random electrons (``probs``: of 0, 1, ... per event): counts, owner, fields."""
    counts, own, ele = _leptons(rng, n, probs, 0.000511, 32.0)
    k = ele["pt"].shape[0]
    ele.update(pfRelIso03_all=rng.exponential(0.05, k), dxy=rng.normal(0.0, 0.01, k),
               cutBased=rng.choice(5, size=k, p=[0.05, 0.1, 0.15, 0.2, 0.5]))
    return counts, own, ele


def _muons(rng, n, probs):
    counts, own, mu = _leptons(rng, n, probs, 0.10566, 34.0)
    k = mu["pt"].shape[0]
    mu.update(pfRelIso04_all=rng.exponential(0.06, k), tightId=rng.uniform(size=k) < 0.85,
              dxy=rng.normal(0.0, 0.008, k))
    return counts, own, mu


def _taus(rng, n):
    ntau = _counts(rng, n, [0.7, 0.22, 0.06, 0.02])
    town, tpt, teta, tphi = _objects(rng, ntau, 20.0, 22.0, 1.1, 2.3)
    tpt, teta, tphi = _sort_within(town, tpt, teta, tphi)
    k = tpt.shape[0]
    return ntau, {"pt": tpt, "eta": teta, "phi": tphi, "mass": np.clip(rng.normal(0.8, 0.35, k), 0.14, 1.77),
                  "charge": rng.choice([-1, 1], size=k), "decayMode": rng.choice([0, 1, 10, 11], size=k),
                  "idDeepTau2017v2p1VSjet": rng.choice([1, 3, 7, 15, 31, 63, 127, 255], size=k)}


def _photons(rng, n):
    npho = _counts(rng, n, [0.6, 0.25, 0.1, 0.04, 0.01])
    pown, ppt, peta, pphi = _objects(rng, npho, 15.0, 20.0, 1.2, 2.5)
    ppt, peta, pphi = _sort_within(pown, ppt, peta, pphi)
    k = ppt.shape[0]
    return npho, {"pt": ppt, "eta": peta, "phi": pphi, "r9": rng.beta(8.0, 1.5, k),
                  "sieie": np.abs(rng.normal(0.010, 0.002, k)), "cutBased": rng.choice(4, size=k)}


def _event_flat(rng, n, ht, electrons, muons, nu_scale=24.0, nu=None):
    """Event-level branches; the neutrinos' (px, py) are ``nu``, or drawn with a gamma(2, ``nu_scale``) pt."""
    eown, ele = electrons
    mown, mu = muons
    npv = rng.poisson(32.0, n)
    if nu is None:
        nu_pt = rng.gamma(2.0, nu_scale, n)
        nu_phi = rng.uniform(-np.pi, np.pi, n)
        nu = nu_pt * np.cos(nu_phi), nu_pt * np.sin(nu_phi)
    met_x = nu[0] + rng.normal(0.0, 15.0, n)
    met_y = nu[1] + rng.normal(0.0, 15.0, n)
    lep_sum = np.bincount(eown, weights=ele["pt"], minlength=n) + np.bincount(mown, weights=mu["pt"], minlength=n)
    tight_mu = mu["tightId"] & (mu["pt"] > 20.0) & (mu["pfRelIso04_all"] < 0.15)
    tight_e = (ele["cutBased"] >= 4) & (ele["pt"] > 20.0)
    n_tight = np.bincount(mown, weights=tight_mu, minlength=n) + np.bincount(eown, weights=tight_e, minlength=n)
    flat = {
        "bunchCrossing": rng.integers(1, 3565, n),
        "MET_pt": np.hypot(met_x, met_y), "MET_phi": np.arctan2(met_y, met_x),
        "MET_sumEt": ht + lep_sum + rng.gamma(4.0, 60.0, n),
        "PV_npvs": npv, "PV_npvsGood": np.clip(npv - rng.binomial(npv, 0.05), 0, 255),
        "PV_z": rng.normal(0.0, 3.5, n), "HT": ht, "nLepton_tight": n_tight,
        "fixedGridRhoFastjet": np.clip(0.55 * npv + rng.normal(0.0, 2.0, n), 0.0, None),
        "genWeight": np.where(rng.uniform(size=n) < 0.02, -1.0, 1.0),
        "Pileup_nTrueInt": np.clip(npv * rng.normal(1.0, 0.1, n), 0.0, None),
        "btagWeight_DeepFlavB": rng.normal(1.0, 0.05, n), "L1PreFiringWeight_Nom": 1.0 - rng.exponential(0.01, n),
        "LHE_HT": ht * rng.normal(1.0, 0.1, n),
        "Flag_goodVertices": rng.uniform(size=n) < 0.999, "Flag_METFilters": rng.uniform(size=n) < 0.99,
        "HLT_IsoMu24": _per_event_any(mown, tight_mu & (mu["pt"] > 26.0), n) & (rng.uniform(size=n) < 0.92),
        "HLT_Ele32_WPTight_Gsf": _per_event_any(eown, tight_e & (ele["pt"] > 34.0), n) & (rng.uniform(size=n) < 0.85),
    }
    return {k: np.asarray(v, dtype=TTH_FLAT[k]) for k, v in flat.items()}


def _typed_collections(raw):
    return {name: (counts.astype(np.int64), {f: np.asarray(fields[f], dtype=t)
                                             for f, t in TTH_COLLECTIONS[name].items()})
            for name, (counts, fields) in raw.items()}


def tth_block(rng, n, label):
    """``n`` events of class ``label``: (flat dict without run/lumi/event, {collection: (counts, fields)})."""
    sig = label == 1
    # jets: ttH(bb) has two more b jets and more jets in total than tt+jets
    njet = np.clip((4 if sig else 3) + rng.poisson(2.3 if sig else 2.5, n), 2, MAX_OBJECTS)
    nb = rng.choice([2, 3, 4, 1], size=n, p=[0.22, 0.35, 0.43, 0.0] if sig else [0.62, 0.16, 0.08, 0.14])
    nb = np.minimum(nb, njet)
    nc = np.minimum(rng.binomial(1, 0.25, n), njet - nb)
    owner, pt, eta, phi = _objects(rng, njet, 25.0, 38.0, 1.5, 4.7)
    first = np.repeat(np.cumsum(njet) - njet, njet)
    local = np.arange(owner.shape[0]) - first
    flav = np.where(local < nb[owner], 5, np.where(local < (nb + nc)[owner], 4, 0)).astype(np.int32)
    is_b = flav == 5
    pt = np.where(is_b, 25.0 + rng.exponential(62.0 if sig else 52.0, pt.shape[0]), pt)
    eta = np.where(is_b, np.clip(eta, -2.5, 2.5), eta)
    btag, qgl = _jet_tags(rng, flav)
    pt, eta, phi, flav, btag, qgl = _sort_within(owner, pt, eta, phi, flav, btag, qgl)
    jets = _jet_fields(rng, pt, eta, phi, flav, btag, qgl)
    ht = np.bincount(owner, weights=pt, minlength=n)

    lep_probs = [0.52, 0.40, 0.06, 0.015, 0.005]
    ne, eown, ele = _electrons(rng, n, lep_probs)
    nmu, mown, mu = _muons(rng, n, lep_probs)
    ntau, taus = _taus(rng, n)
    npho, photons = _photons(rng, n)

    # boosted objects: ttH has more and heavier (top / Higgs) fat jets with a double-b tag
    nfat = _counts(rng, n, [0.45, 0.35, 0.15, 0.05] if sig else [0.6, 0.3, 0.08, 0.02])
    fown, fpt, feta, fphi = _objects(rng, nfat, 200.0, 120.0 if sig else 95.0, 1.2, 2.4)
    k = fpt.shape[0]
    peak = rng.choice([172.5, 125.0, 80.4], size=k, p=[0.45, 0.35, 0.2] if sig else [0.55, 0.0, 0.45])
    fmass = np.abs(peak * rng.normal(1.0, 0.12, k))
    if not sig:  # 40% of the background fat jets are QCD-like, with a falling mass spectrum
        fmass = np.where(rng.uniform(size=k) < 0.4, 20.0 + rng.exponential(60.0, k), fmass)
    tau1 = rng.uniform(0.1, 0.5, k)
    fpt, feta, fphi, fmass, tau1 = _sort_within(fown, fpt, feta, fphi, fmass, tau1)
    fat = {"pt": fpt, "eta": feta, "phi": fphi, "mass": fmass, "msoftdrop": fmass * rng.uniform(0.8, 1.0, k),
           "tau1": tau1, "tau2": tau1 * rng.uniform(0.3, 0.9, k),
           "btagDDBvLV2": rng.beta(2.0, 3.0, k) if sig else rng.beta(1.0, 6.0, k)}

    flat = _event_flat(rng, n, ht, (eown, ele), (mown, mu), nu_scale=26.0 if sig else 24.0)
    raw = {"Jet": (njet, jets), "Electron": (ne, ele), "Muon": (nmu, mu), "Tau": (ntau, taus),
           "Photon": (npho, photons), "FatJet": (nfat, fat)}
    return flat, _typed_collections(raw)


# ---------------------------------------------------------------------------------------------
# ttH(bb) vs tt+bb vs tt+light, single-lepton channel, built from the top quarks' decays

TTH_TASK_CLASSES = ("ttH", "ttbb", "ttlf")
# not observable: the generator's record; the jets and the lepton carry what can be measured of it
TTH_TRUTH: dict[str, str] = {
    "GenTop_pt": "float32", "GenTop_eta": "float32", "GenTop_phi": "float32", "GenTop_mass": "float32",
    "GenW_mass": "float32", "GenExtra_pt": "float32", "GenExtra_mass": "float32",
}
TOP_MASS, TOP_WIDTH, W_MASS, W_WIDTH, B_MASS = 172.5, 1.42, 80.4, 2.085, 4.8
# parton slots per event: hadronic top (b, q, q'), leptonic top's b, the extra pair, up to 4 ISR partons
_B_HAD, _Q1, _Q2, _B_LEP, _X1, _X2, _ISR = range(7)
_SLOTS, _MAX_ISR = 10, 4
# per class: pt scales (gamma) of the extra pair and of the tops' relative pt, mean ISR partons
_TASK_SHAPES = {0: (60.0, 62.0, 0.8), 1: (38.0, 56.0, 0.8), 2: (0.0, 52.0, 1.0)}


def truncated_breit_wigner(rng, n, mass, width, lo, hi):
    """Breit-Wigner masses restricted to [lo, hi] by inverting the cumulative distribution (no edge spikes)."""
    half = 0.5 * width
    a, b = np.arctan((lo - mass) / half), np.arctan((hi - mass) / half)
    return mass + half * np.tan(rng.uniform(a, b, n))


def decay(rng, parent, m1, m2):
    """Isotropic two-body decay of ``parent`` (E, px, py, pz) into daughters of masses ``m1``, ``m2``."""
    e, px, py, pz = parent
    m = inv_mass(e, px, py, pz)
    p = np.sqrt(np.maximum((m * m - (m1 + m2) ** 2) * (m * m - (m1 - m2) ** 2), 0.0)) / (2.0 * m)
    cos_t = rng.uniform(-1.0, 1.0, m.shape)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    phi = rng.uniform(-np.pi, np.pi, m.shape)
    k = (p * sin_t * np.cos(phi), p * sin_t * np.sin(phi), p * cos_t)
    bx, by, bz, gamma = px / e, py / e, pz / e, e / m
    g2 = gamma * gamma / (gamma + 1.0)  # (gamma - 1) / beta^2, without 0/0 at rest
    out = []
    for sign, md in ((1.0, m1), (-1.0, m2)):
        qx, qy, qz = sign * k[0], sign * k[1], sign * k[2]
        es = np.sqrt(p * p + md * md)
        bp = bx * qx + by * qy + bz * qz
        out.append((gamma * (es + bp), qx + (g2 * bp + gamma * es) * bx,
                    qy + (g2 * bp + gamma * es) * by, qz + (g2 * bp + gamma * es) * bz))
    return out[0], out[1]


def _four(v):
    return np.stack(v, axis=-1)


def _merge_close(p4, present, i, j, flav):
    """Partons ``i`` and ``j`` closer than the jet radius (0.4) make one jet (the sum, in slot ``i``)."""
    _, eta, phi = polar(p4[:, i, 1], p4[:, i, 2], p4[:, i, 3])
    _, eta2, phi2 = polar(p4[:, j, 1], p4[:, j, 2], p4[:, j, 3])
    close = present[:, i] & present[:, j] & (delta_r(eta, phi, eta2, phi2) < 0.4)
    p4[close, i] += p4[close, j]
    present[close, j] = False
    flav[close, i] = np.maximum(flav[close, i], flav[close, j])


def _tt_candidates(rng, n, label):
    """``n`` generated semileptonic tt+X events; the selection keeps one central lepton and >= 4 jets."""
    x_scale, k_sigma, isr_mean = _TASK_SHAPES[label]
    p4 = np.zeros((n, _SLOTS, 4))
    flav = np.zeros((n, _SLOTS), dtype=np.int32)
    present = np.zeros((n, _SLOTS), dtype=bool)
    if label == 2:  # tt + light jets: two radiated partons, no resonance (a c quark now and then)
        for s in (_X1, _X2):
            p4[:, s] = _four(cartesian(20.0 + rng.exponential(40.0, n), rng.normal(0.0, 1.6, n),
                                       rng.uniform(-np.pi, np.pi, n)))
            flav[:, s] = np.where(rng.uniform(size=n) < 0.1, 4, 0)
        extra = tuple((p4[:, _X1] + p4[:, _X2]).T)
    else:  # H -> bb at 125 GeV, or a gluon splitting into bb: a falling mass spectrum, softer
        mass = np.full(n, 125.0) if label == 0 else 12.0 + rng.gamma(1.5, 35.0, n)
        pt, phi = rng.gamma(2.0, x_scale, n), rng.uniform(-np.pi, np.pi, n)
        extra = boson(rng, mass, pt * np.cos(phi), pt * np.sin(phi), 1.2)
        b1, b2 = decay(rng, extra, B_MASS, B_MASS)
        p4[:, _X1], p4[:, _X2] = _four(b1), _four(b2)
        flav[:, _X1] = flav[:, _X2] = 5
    present[:, _X1] = present[:, _X2] = True

    # the tops balance the extra pair and share a random relative transverse momentum
    k_pt, k_phi = rng.gamma(1.6, k_sigma, n), rng.uniform(-np.pi, np.pi, n)
    kx, ky = k_pt * np.cos(k_phi), k_pt * np.sin(k_phi)
    m_had = truncated_breit_wigner(rng, n, TOP_MASS, TOP_WIDTH, 150.0, 195.0)
    m_lep = truncated_breit_wigner(rng, n, TOP_MASS, TOP_WIDTH, 150.0, 195.0)
    top_had = boson(rng, m_had, -extra[1] / 2 + kx, -extra[2] / 2 + ky, 1.0)
    top_lep = boson(rng, m_lep, -extra[1] / 2 - kx, -extra[2] / 2 - ky, 1.0)
    mw_had = truncated_breit_wigner(rng, n, W_MASS, W_WIDTH, 60.0, 100.0)
    mw_lep = truncated_breit_wigner(rng, n, W_MASS, W_WIDTH, 60.0, 100.0)
    w_had, b_had = decay(rng, top_had, mw_had, B_MASS)
    q1, q2 = decay(rng, w_had, 0.0, 0.0)
    w_lep, b_lep = decay(rng, top_lep, mw_lep, B_MASS)
    lep, nu = decay(rng, w_lep, 0.0, 0.0)
    for s, v in ((_B_HAD, b_had), (_Q1, q1), (_Q2, q2), (_B_LEP, b_lep)):
        p4[:, s], present[:, s] = _four(v), True
    flav[:, _B_HAD] = flav[:, _B_LEP] = 5
    flav[:, _Q1] = np.where(rng.uniform(size=n) < 0.5, 4, 0)  # W -> cs about half the time

    n_isr = np.minimum(rng.poisson(isr_mean, n), _MAX_ISR)
    isr = _four(cartesian(20.0 + rng.exponential(28.0, (n, _MAX_ISR)), rng.normal(0.0, 2.2, (n, _MAX_ISR)),
                          rng.uniform(-np.pi, np.pi, (n, _MAX_ISR))))
    p4[:, _ISR:] = isr
    present[:, _ISR:] = np.arange(_MAX_ISR)[None, :] < n_isr[:, None]
    # for the fat jets: how far the decay products spread around their parent, before any merging
    _, t_eta, t_phi = polar(*top_had[1:])
    extra_pt, extra_eta, extra_phi = polar(*extra[1:])
    top_dr = np.max([delta_r(t_eta, t_phi, *polar(*v[1:])[1:]) for v in (b_had, q1, q2)], axis=0)
    extra_dr = delta_r(*polar(*p4[:, _X1, 1:].T)[1:], *polar(*p4[:, _X2, 1:].T)[1:])
    _merge_close(p4, present, _Q1, _Q2, flav)
    _merge_close(p4, present, _X1, _X2, flav)

    # jets: the parton's momentum times a response with noise, stochastic and constant terms
    ppt, peta, pphi = polar(p4[..., 1], p4[..., 2], p4[..., 3])
    safe = np.maximum(ppt, 1.0)
    sigma = np.sqrt((3.0 / safe) ** 2 + 1.0 / safe + 0.05**2)
    response = np.clip(1.0 + sigma * rng.standard_normal(ppt.shape), 0.3, None)
    # a semileptonic b (or c) decay's neutrino leaves the jet: a low tail for heavy-flavour jets
    semilep = (flav >= 4) & (rng.uniform(size=ppt.shape) < 0.2)
    response = np.where(semilep, response * rng.uniform(0.65, 0.95, ppt.shape), response)
    jpt = ppt * response
    jeta = peta + rng.normal(0.0, 0.01, ppt.shape)
    jphi = delta_phi(pphi + rng.normal(0.0, 0.01, ppt.shape), 0.0)
    jmass = inv_mass(*np.moveaxis(p4, -1, 0)) * response
    jets = present & (jpt > 25.0) & (np.abs(jeta) < 4.7)

    lep_pt, lep_eta, lep_phi = polar(*lep[1:])
    keep = (lep_pt > 30.0) & (np.abs(lep_eta) < 2.4) & (jets.sum(axis=1) >= 4)
    ev = dict(
        jets=jets, jpt=jpt, jeta=jeta, jphi=jphi, jmass=jmass, flav=flav,
        lep_pt=lep_pt, lep_eta=lep_eta, lep_phi=lep_phi, lep_is_mu=rng.uniform(size=n) < 0.5,
        nu_x=nu[1], nu_y=nu[2], top_pt=np.hypot(top_had[1], top_had[2]), top_eta=t_eta, top_phi=t_phi,
        top_mass=m_had, top_dr=top_dr, w_mass=mw_had, extra_pt=extra_pt, extra_eta=extra_eta,
        extra_phi=extra_phi, extra_mass=inv_mass(*extra), extra_dr=extra_dr,
    )
    return ev, keep


def _add_objects(n, owner, fields, extra_owner, extra):
    """Objects ``extra`` (same fields) added to a collection, which stays sorted by pt inside each event."""
    owner = np.concatenate([owner, extra_owner])
    fields = {k: np.concatenate([v, np.asarray(extra[k], dtype=np.asarray(v).dtype)]) for k, v in fields.items()}
    order = np.lexsort((-fields["pt"], owner))
    return np.bincount(owner, minlength=n), owner[order], {k: v[order] for k, v in fields.items()}


def _isolated(rng, k):
    """Relative isolation of the selected lepton: exponential, below the tight cut (0.15)."""
    return -0.02 * np.log1p(-rng.uniform(0.0, 1.0 - np.exp(-0.15 / 0.02), k))


def _task_fatjets(rng, n, ev, label):
    """Fat jets (R=0.8): the hadronic top or the extra pair when their decay fits the cone, plus QCD ones."""
    top = (ev["top_pt"] > 200.0) & (ev["top_dr"] < 0.8)
    pair = (ev["extra_pt"] > 200.0) & (ev["extra_dr"] < 0.8) & (label != 2)
    nqcd = _counts(rng, n, [0.8, 0.16, 0.04])
    qown, qpt, qeta, qphi = _objects(rng, nqcd, 200.0, 80.0, 1.2, 2.4)
    it, ip = np.flatnonzero(top), np.flatnonzero(pair)
    owner = np.concatenate([it, ip, qown])
    k, kt, kp = owner.shape[0], it.shape[0], ip.shape[0]
    true_pt = np.concatenate([ev["top_pt"][it], ev["extra_pt"][ip], qpt])
    mass = np.concatenate([ev["top_mass"][it], ev["extra_mass"][ip], 20.0 + rng.exponential(50.0, qpt.shape[0])])
    prongs = np.concatenate([np.full(kt, 3), np.full(kp, 2), np.ones(qpt.shape[0], dtype=int)])
    fields = {
        "pt": true_pt * rng.normal(0.97, 0.08, k),
        "eta": np.concatenate([ev["top_eta"][it], ev["extra_eta"][ip], qeta]) + rng.normal(0.0, 0.02, k),
        "phi": delta_phi(np.concatenate([ev["top_phi"][it], ev["extra_phi"][ip], qphi]) + rng.normal(0.0, 0.02, k), 0.0),
        "mass": mass * rng.normal(1.0, 0.1, k),
    }
    fields["msoftdrop"] = fields["mass"] * rng.uniform(0.85, 1.0, k)
    fields["tau1"] = rng.uniform(0.1, 0.5, k)
    fields["tau2"] = fields["tau1"] * np.where(prongs > 1, rng.uniform(0.25, 0.6, k), rng.uniform(0.55, 0.95, k))
    fields["btagDDBvLV2"] = np.where(prongs == 2, rng.beta(4.0, 2.0, k), rng.beta(1.0, 7.0, k))
    order = np.lexsort((-fields["pt"], owner))
    return np.bincount(owner, minlength=n), {f: v[order] for f, v in fields.items()}


def tth_tasks_block(rng, n, label):
    """``n`` selected single-lepton events of class ``label`` (0 ttH(bb), 1 tt+bb, 2 tt+light).

    Returns (flat dict with the ``Gen*`` truth, without run/lumi/event; {collection: (counts, fields)}),
    laid out like :func:`tth_block`. The jets come from the partons of the decays: the hadronic top's
    b, q, q' (so ``GenTop_pt`` is measurable from them), the leptonic top's b, the extra pair
    (H -> bb, g -> bb, or two light partons) and radiation.
    """
    ev = _select(rng, n, lambda r, m: _tt_candidates(r, m, label))
    jets = ev["jets"]
    njet = jets.sum(axis=1)
    owner = np.repeat(np.arange(n), njet)
    pt, eta, phi, mass, flav = (ev[k][jets] for k in ("jpt", "jeta", "jphi", "jmass", "flav"))
    # no b tagging outside the tracker: forward jets score like light jets
    btag, qgl = _jet_tags(rng, np.where(np.abs(eta) < 2.5, flav, 0))
    pt, eta, phi, mass, flav, btag, qgl = _sort_within(owner, pt, eta, phi, mass, flav, btag, qgl)
    fields = _jet_fields(rng, pt, eta, phi, flav, btag, qgl)
    fields["mass"] = np.maximum(fields["mass"], mass)
    ht = np.bincount(owner, weights=pt, minlength=n)

    # the W's lepton (the selection's isolated, tight one) beside the usual non-prompt and fake ones
    ne, eown, ele = _electrons(rng, n, [0.9, 0.09, 0.01])
    nmu, mown, mu = _muons(rng, n, [0.9, 0.09, 0.01])
    is_mu = ev["lep_is_mu"]
    charge = rng.choice([-1, 1], size=n)
    lep = {"pt": ev["lep_pt"], "eta": ev["lep_eta"], "phi": ev["lep_phi"], "charge": charge}
    e_idx, m_idx = np.flatnonzero(~is_mu), np.flatnonzero(is_mu)
    ne, eown, ele = _add_objects(n, eown, ele, e_idx, {
        **{k: v[e_idx] for k, v in lep.items()}, "mass": np.full(e_idx.shape[0], 0.000511),
        "pfRelIso03_all": _isolated(rng, e_idx.shape[0]), "dxy": rng.normal(0.0, 0.005, e_idx.shape[0]),
        "cutBased": np.full(e_idx.shape[0], 4)})
    nmu, mown, mu = _add_objects(n, mown, mu, m_idx, {
        **{k: v[m_idx] for k, v in lep.items()}, "mass": np.full(m_idx.shape[0], 0.10566),
        "pfRelIso04_all": _isolated(rng, m_idx.shape[0]), "tightId": np.ones(m_idx.shape[0], dtype=bool),
        "dxy": rng.normal(0.0, 0.004, m_idx.shape[0])})
    ntau, taus = _taus(rng, n)
    npho, photons = _photons(rng, n)
    nfat, fat = _task_fatjets(rng, n, ev, label)

    flat = _event_flat(rng, n, ht, (eown, ele), (mown, mu), nu=(ev["nu_x"], ev["nu_y"]))
    truth = {"GenTop_pt": ev["top_pt"], "GenTop_eta": ev["top_eta"], "GenTop_phi": ev["top_phi"],
             "GenTop_mass": ev["top_mass"], "GenW_mass": ev["w_mass"], "GenExtra_pt": ev["extra_pt"],
             "GenExtra_mass": ev["extra_mass"]}
    flat.update({k: np.asarray(v, dtype=TTH_TRUTH[k]) for k, v in truth.items()})
    raw = {"Jet": (njet, fields), "Electron": (ne, ele), "Muon": (nmu, mu), "Tau": (ntau, taus),
           "Photon": (npho, photons), "FatJet": (nfat, fat)}
    return flat, _typed_collections(raw)
