"""The archive of paid answers (store/archive.py) as a Dagster resource, with its claim times in
the run config."""

from __future__ import annotations

import dagster as dg

from ..store.archive import Archive
from ..store.claims import DEFAULT_LEASE_S, DEFAULT_POLL_S, DEFAULT_RENEW_S, DEFAULT_WAIT_S, ClaimTimes


class ResponseStore(dg.ConfigurableResource):
    """The archive of paid answers under `base_path` (`archive()`), with the times of the claims
    on calls in flight (see store/claims.py), so two runs never pay for one answer."""

    base_path: str
    claim_lease_s: float = DEFAULT_LEASE_S
    """A claim on a call lasts this long unless its owner renews it; a dead owner's claim is taken
    over after it."""
    claim_renew_s: float = DEFAULT_RENEW_S
    """How often the owner of a claim renews it while its call is in flight."""
    claim_wait_s: float = DEFAULT_WAIT_S
    """How long a run waits for the answer of a call another live run has claimed, before it fails
    that partition (a later re-run reuses the answer)."""
    claim_poll_s: float = DEFAULT_POLL_S
    """How often a waiting run looks for that answer."""

    def archive(self) -> Archive:
        """The archive under `base_path`, with this resource's claim times."""
        times = ClaimTimes(self.claim_lease_s, self.claim_renew_s, self.claim_wait_s, self.claim_poll_s)
        return Archive(self.base_path, times)

    @classmethod
    def at(cls, base_path: str) -> ResponseStore:
        """The resource for `base_path`, with claim times from DAYDREAM_CLAIM_* when they are set."""
        times = ClaimTimes.from_env()
        return cls(
            base_path=base_path,
            claim_lease_s=times.lease_s,
            claim_renew_s=times.renew_s,
            claim_wait_s=times.wait_s,
            claim_poll_s=times.poll_s,
        )
