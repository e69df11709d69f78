"""Where start-up prefill puts each row of the dynamic cache: a placement planned on the host.

The GPU cache and its NumPy reference load the same plan, so both start in the same layout.
Keys come hottest first (by ``meta``, else file order). Every key may live in either of its two
sets (placement.sets_of), 8 ways each:

1. every key goes into its primary set, hottest first, while it has a free way;
2. the overflow goes into its second set, in order, while that has a free way;
3. rounds of cuckoo moves, vectorized: each key still out picks a chain of one resident (then,
   once those run out, two) that can move to its other set and free a way in one of the key's
   sets; where two chains touch a set, the hotter key's chain goes first;
4. a breadth-first search (chains of up to ``BFS_DEPTH`` moves, one key at a time) for the few
   keys left.

With placement.SLOT_HEADROOM (3 % more slots than keys) nothing was left out in simulations of
tables from 1 K to 8 M rows; whatever is left out would be the coldest keys of the tightest
sets. No key is ever in both of its sets, and a set holds at most WAYS keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .placement import EMPTY_KEY, WAYS, sets_of

BFS_DEPTH = 6
# Keys whose two-move chains are searched at once (each takes WAYS² candidates per set).
_CHAIN_BATCH = 1 << 16


@dataclass
class PrefillPlan:
    """The slot of each planned key (``slots[i]``: ``set * WAYS + way``, -1 when left out) and
    the key array of the whole cache (``slot_keys``, EMPTY_KEY in free slots)."""

    num_sets: int
    slots: np.ndarray
    slot_keys: np.ndarray

    @property
    def placed(self) -> int:
        return int(np.count_nonzero(self.slots >= 0))

    @property
    def left_out(self) -> int:
        return int(self.slots.size - self.placed)

    def slot_rows(self, rows: np.ndarray) -> np.ndarray:
        """The table row of every slot (-1 when free), given the row of each planned key."""
        out = np.full(self.num_sets * WAYS, -1, np.int64)
        placed = self.slots >= 0
        out[self.slots[placed]] = np.asarray(rows, np.int64)[placed]
        return out


def plan_prefill(keys: np.ndarray, num_sets: int) -> PrefillPlan:
    """Plan the placement of distinct ``keys`` (hottest first) in ``num_sets`` sets."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    s1, s2 = sets_of(keys, num_sets)
    where, way, count = _two_passes(s1, s2, num_sets)
    members = np.full((num_sets, WAYS), -1, np.int64)
    placed = where >= 0
    members[where[placed], way[placed]] = np.flatnonzero(placed)
    for depth in (1, 2):
        while True:
            unplaced = np.flatnonzero(where < 0)
            if not unplaced.size:
                break
            if not _move_round(unplaced, depth, s1, s2, where, way, count, members, num_sets):
                break
    _search_chains(np.flatnonzero(where < 0), s1, s2, where, way, count, members)
    slots = np.where(where >= 0, where * WAYS + way, -1)
    slot_keys = np.full(num_sets * WAYS, EMPTY_KEY, np.int64)
    placed = slots >= 0
    slot_keys[slots[placed]] = keys[placed]
    return PrefillPlan(num_sets, slots, slot_keys)


def _rank_in_group(groups: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements (in array order) share its group."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if g.size else np.empty(0, np.int64)
    first = np.repeat(starts, np.diff(np.r_[starts, g.size]))
    rank = np.empty(groups.size, np.int64)
    rank[order] = np.arange(g.size) - first
    return rank


def _two_passes(s1, s2, num_sets):
    """Steps 1 and 2 of the module doc: (set, way) of each key, -1 when out; keys per set."""
    n = s1.size
    where = np.full(n, -1, np.int64)
    way = np.full(n, -1, np.int64)
    rank = _rank_in_group(s1)
    fits = rank < WAYS
    where[fits], way[fits] = s1[fits], rank[fits]
    count = np.bincount(s1[fits], minlength=num_sets).astype(np.int64)
    over = np.flatnonzero(~fits)
    if over.size:
        rank2 = _rank_in_group(s2[over])
        fits2 = rank2 < WAYS - count[s2[over]]
        idx = over[fits2]
        where[idx] = s2[idx]
        way[idx] = count[s2[idx]] + rank2[fits2]
        np.add.at(count, s2[idx], 1)
    return where, way, count


def _move_round(unplaced, depth, s1, s2, where, way, count, members, num_sets) -> int:
    """One round of step 3 (in batches of ``_CHAIN_BATCH`` keys, hottest first, to bound the
    memory of the chain search); returns how many keys were placed."""
    placed = 0
    for start in range(0, unplaced.size, _CHAIN_BATCH):
        u = unplaced[start : start + _CHAIN_BATCH]
        placed += _move_batch(u, depth, s1, s2, where, way, count, members, num_sets)
    return placed


def _move_batch(u, depth, s1, s2, where, way, count, members, num_sets) -> int:
    def other(r):
        return np.where(where[r] == s1[r], s2[r], s1[r])

    cs = np.stack([s1[u], s2[u]], axis=1)  # (U, 2): the key's sets
    res = members[cs]  # (U, 2, WAYS): their residents
    valid_r = res >= 0
    rr = np.where(valid_r, res, 0)
    t = other(rr)  # where each resident would go
    home_r = (where[rr] != s1[rr]) & valid_r  # a resident in its second set: the move sends it home
    k_primary = np.zeros((1, 2, 1), bool)
    k_primary[0, 0, 0] = True
    n = np.arange(u.size)
    if depth == 1:
        # Prefer a move that sends a resident home, then one that frees the key's primary.
        prio = (valid_r & (count[t] < WAYS)) * 4 + home_r * 2 + k_primary
        flat = prio.reshape(u.size, -1)
        best = np.argmax(flat, axis=1)
        has = flat[n, best] >= 4
        if not has.any():
            return 0
        u, best = u[has], best[has]
        n = np.arange(u.size)
        si, wi = best // WAYS, best % WAYS
        s = cs[has][n, si]
        r = res[has][n, si, wi]
        tt = t[has][n, si, wi]
        touched = [s, tt]
    else:
        q = members[t]  # (U, 2, WAYS, WAYS): the residents of each resident's other set
        valid_q = (q >= 0) & valid_r[..., None]
        qq = np.where(valid_q, q, 0)
        v = other(qq)
        home_q = (where[qq] != s1[qq]) & valid_q
        prio = (
            (valid_q & (count[v] < WAYS)) * 8
            + home_q * 4
            + home_r[..., None] * 2
            + k_primary[..., None]
        )
        flat = prio.reshape(u.size, -1)
        best = np.argmax(flat, axis=1)
        has = flat[n, best] >= 8
        if not has.any():
            return 0
        u, best = u[has], best[has]
        n = np.arange(u.size)
        si, rest = best // (WAYS * WAYS), best % (WAYS * WAYS)
        wi, qi = rest // WAYS, rest % WAYS
        s = cs[has][n, si]
        r = res[has][n, si, wi]
        tt = t[has][n, si, wi]
        qk = q[has][n, si, wi, qi]
        vv = v[has][n, si, wi, qi]
        touched = [s, tt, vv]
    # A chain is applied when it is the hottest key's (lowest index) in each set it touches.
    first = np.full(num_sets, np.iinfo(np.int64).max, np.int64)
    for sets in touched:
        np.minimum.at(first, sets, u)
    accepted = np.ones(u.size, bool)
    for sets in touched:
        accepted &= first[sets] == u
    u, s, r, tt = u[accepted], s[accepted], r[accepted], tt[accepted]
    if depth == 2:
        qk, vv = qk[accepted], vv[accepted]
        _move(qk, tt, vv, where, way, count, members)
    _move(r, s, tt, where, way, count, members)
    wr = _free_way(members, s)
    members[s, wr] = u
    where[u], way[u] = s, wr
    count[s] += 1
    return int(u.size)


def _free_way(members, sets):
    return np.argmax(members[sets] < 0, axis=1)


def _move(keys, src, dst, where, way, count, members) -> None:
    """Move placed ``keys`` from set ``src`` to a free way of set ``dst`` (distinct sets)."""
    to = _free_way(members, dst)
    members[src, way[keys]] = -1
    members[dst, to] = keys
    where[keys], way[keys] = dst, to
    count[dst] += 1
    count[src] -= 1


def _search_chains(left, s1, s2, where, way, count, members) -> None:
    """Step 4: one key at a time, breadth first, a chain of up to BFS_DEPTH residents that can
    each move to their other set."""
    for k in left.tolist():
        start = [int(s1[k]), int(s2[k])]
        parent: dict[int, tuple[int, int] | None] = {s: None for s in start}
        frontier, goal = start, None
        for _ in range(BFS_DEPTH):
            following = []
            for s in frontier:
                for r in members[s].tolist():
                    t = int(s2[r]) if where[r] == s1[r] else int(s1[r])
                    if t in parent:
                        continue
                    parent[t] = (r, s)
                    if count[t] < WAYS:
                        goal = t
                        break
                    following.append(t)
                if goal is not None:
                    break
            if goal is not None:
                break
            frontier = following
        if goal is None:
            continue
        t = goal
        while parent[t] is not None:  # the last move of the chain first
            r, s = parent[t]
            _move(np.array([r]), np.array([s]), np.array([t]), where, way, count, members)
            t = s
        w = int(np.flatnonzero(members[t] < 0)[0])
        members[t, w] = k
        where[k], way[k] = t, w
        count[t] += 1
