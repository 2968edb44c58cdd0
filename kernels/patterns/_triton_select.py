"""Triton helpers for an exact top-k over a long row held in global memory, shared by the
builders' selection kernels (``_triton_vs._vs_select_*``, ``_triton_sa._sa_select``). Not a
pattern.

A row too long for registers is taken ``CHUNK`` scores at a time. The k-th largest score is
found as a radix select on order-preserving integer keys, 8 bits a pass from the top: each pass
counts the keys that share the bits fixed so far by their next 8 bits (:func:`digit_counts`,
summed over the chunks) and keeps the digit where the k-th falls (:func:`next_digit`). Equal
scores are taken by position, lowest first, as a stable descending sort would: either counted
while writing (:func:`take_top`, after four passes fix all 32 bits), or folded into the key
(:func:`ranked_keys`: the score, then the position, so every key is distinct and the k-th
largest alone decides what is taken).
"""
from __future__ import annotations

from ..sparse_attention import HAS_TRITON, tl, triton

if HAS_TRITON:

    @triton.jit
    def order_keys(s):
        """float32 -> int64 in [0, 2^32) with the floats' order."""
        bits = s.to(tl.int32, bitcast=True)
        return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648

    @triton.jit
    def digit_counts(key, valid, prefix, shift):
        """(256,) int32: of the valid keys whose bits above ``shift + 8`` are ``prefix``, how
        many have each value of the 8 bits at ``shift``."""
        match = valid & ((key >> (shift + 8)) == prefix)
        counts = tl.histogram(tl.where(match, (key >> shift) & 255, 0).to(tl.int32), 256)
        # the keys that do not match were counted as digit 0
        return counts - tl.where(tl.arange(0, 256) == 0, tl.sum((match == 0).to(tl.int32), 0), 0)

    @triton.jit
    def next_digit(counts, rem):
        """(the digit of the rem-th largest key among those counted, how many keys with that
        digit are still to take)."""
        bins = tl.arange(0, 256)
        at_least = tl.sum(counts, 0) - tl.cumsum(counts, 0) + counts      # keys with digit >= bin
        digit = tl.max(tl.where(at_least >= rem, bins, 0), 0)
        return digit, rem - tl.sum(tl.where(bins == digit, at_least - counts, 0), 0)

    @triton.jit
    def ranked_keys(key, offs):
        """uint64 keys, all distinct, in the order an exact top-k takes: by ``key`` (from
        :func:`order_keys`), then the lower position ``offs`` first."""
        return (key.to(tl.uint64) << 32) | (4294967295 - offs.to(tl.int64)).to(tl.uint64)

    @triton.jit
    def take_top(key, valid, threshold, ties_before, ties_wanted):
        """The keys above ``threshold`` and, of those equal to it, the first ``ties_wanted``
        counting the ``ties_before`` met in earlier chunks. Returns (mask, ties in this chunk)."""
        eq = valid & (key == threshold)
        take = valid & ((key > threshold) | (eq & (ties_before + tl.cumsum(eq.to(tl.int32), 0) <= ties_wanted)))
        return take, tl.sum(eq.to(tl.int32), 0)
