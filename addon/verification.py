"""Shadow verification and sampled re-checks of learned templates (the mitmproxy side).

store/trust.py decides; this module is the glue the addon calls:

- a lookup that a template on probation would answer (a `Miss` with reason
  "verify") is forwarded to the provider unchanged (the client gets the
  provider's answer, streams stay streams, the reply is recorded as any
  miss's) and marked `butter-cache: verify`; when the reply is complete,
  `conclude` compares it with what the template would have served and
  updates the template's trust (on the writer thread);
- a served hit of a trusted template is re-asked 1 in `butter_verify_sample`
  times (and a hit whose freed decision inputs are new 1 in
  `butter_verify_inputs_sample`), off the request path: the live flow is
  copied in memory, marked, and handed to mitmproxy's `replay.client`, so it
  goes upstream with the client's own headers (nothing is stored) through
  every addon; butter forwards the marked copy and compares its answer;
- `butter-verify: off` on a request opts it out of both (removed before
  upstream like every butter header); a probation template then simply
  misses for it.
"""
from __future__ import annotations

import logging
from typing import MutableMapping

from mitmproxy import ctx, exceptions, http

from butter.addon import request_headers
from butter.store import trust_ledger
from butter.store.model import Hit, Miss
from butter.store.trust import TrustRules

log = logging.getLogger("butter")

HEADER = "butter-verify"
HEADERS = (HEADER,)
OPTED_OUT = "butter-verify-off"  # flow.metadata: this request is never verified or re-asked
RECHECK = "butter-verify-recheck"  # flow.metadata: a sampled copy of a served hit
STATUS = "verify"  # the butter-cache header of a verification


class HeaderError(ValueError):
    """A butter-verify header butter cannot honour."""


def take(headers: MutableMapping[str, str]) -> bool:
    """Remove `butter-verify` and say whether this request may be verified (default yes)."""
    value = request_headers.single(HEADER, request_headers.pop_all(headers, HEADER), HeaderError)
    if value is None or value.lower() in ("on", "true"):
        return True
    if value.lower() in ("off", "false"):
        return False
    raise HeaderError(f"{HEADER}: {request_headers.shown(value)} is not on or off")


def add_options(loader) -> None:
    loader.add_option("butter_verify", bool, True,
                      "Serve a learned template only after live traffic agrees with it: while on probation, "
                      "a request it would answer goes to the provider and the answers are compared. "
                      "false: serve templates on induction's word (to measure what verification catches).")
    loader.add_option("butter_verify_min", int, 2,
                      "Verified agreements, on values not seen before, that promote a learned template "
                      "(butter_min_observations, when higher, counts the same agreements).")
    loader.add_option("butter_verify_inputs_min", int, 5,
                      "Verified agreements on distinct values of a template's decision inputs (slots that "
                      "never reach its reply, that it states in its text, or numbers and dates it passes "
                      "into a tool call) before new values of them are served.")
    loader.add_option("butter_verify_ranges", bool, True,
                      "Serve new values of freed decision inputs that are numbers or ISO dates only within the "
                      "range verified with the template (a limit may lie beyond it), and two of them only "
                      "compared as in the values seen (an amount above a limit); each side opens after "
                      "butter_verify_inputs_min agreements beyond it, an order after one. Costs verifications "
                      "while data with many numeric fields widens its ranges; false: a freed input serves "
                      "any new value (a threshold crossed only after five one-sided agreements is served wrong "
                      "until a sampled re-check finds it).")
    loader.add_option("butter_verify_rewritable_min", int, 0,
                      "Values of a rewritable slot (the user's words the model writes into a tool call: a city, "
                      "a name) seen copied verbatim, with none ever rewritten, before new values are served "
                      "and re-checked like new decision inputs (0: never; each new value is verified).")
    loader.add_option("butter_verify_quoted_min", int, 5,
                      "The same for a rewritable slot the user's words hold in quotes (\"a folder named "
                      "'Drafts'\"): a quoted value is meant as typed, so verbatim copies free it after this "
                      "many values, none rewritten (0: never).")
    loader.add_option("butter_verify_sample", int, 0,
                      "Re-ask the provider for 1 in N hits of trusted templates, off the request path, and "
                      "demote a template it disagrees with (0: off).")
    loader.add_option("butter_verify_inputs_sample", int, 10,
                      "Re-ask 1 in N hits served with decision-input values the template never saw, once "
                      "its decision inputs are free (0: off).")


def check_options(updated: set[str]) -> None:
    for name in ("butter_verify_min", "butter_verify_inputs_min"):
        if name in updated and getattr(ctx.options, name) < 1:
            raise exceptions.OptionsError(f"{name} must be at least 1")
    for name in ("butter_verify_sample", "butter_verify_inputs_sample", "butter_verify_rewritable_min",
                 "butter_verify_quoted_min"):
        if name in updated and getattr(ctx.options, name) < 0:
            raise exceptions.OptionsError(f"{name} must be 0 (off) or more")


def rules() -> TrustRules:
    o = ctx.options
    return TrustRules(verify=o.butter_verify, promote_after=o.butter_verify_min,
                      free_inputs_after=o.butter_verify_inputs_min, min_observations=o.butter_min_observations,
                      free_rewritable_after=o.butter_verify_rewritable_min, free_quoted_after=o.butter_verify_quoted_min,
                      keep_to_ranges=o.butter_verify_ranges)


def recheck(result, flow: http.HTTPFlow):
    """A sampled copy is never served: its hit becomes a verification."""
    if isinstance(result, Hit) and result.templated and flow.metadata.get(RECHECK):
        return Miss(STATUS, len(result.path) - 1, result.node_id, "a sampled re-check of a served template",
                    result.path, verify=result)
    return result


class Verifier:
    def __init__(self) -> None:
        self.sampled = {"trusted": 0, "new-inputs": 0}  # hits counted towards the next re-check

    def begin(self, flow: http.HTTPFlow, result, fmt: str, model) -> Hit | None:
        """The template hit this forwarded request verifies (None: a plain miss)."""
        hit = getattr(result, "verify", None)
        if hit is None or flow.metadata.get(OPTED_OUT):
            return None
        what = "re-check" if flow.metadata.get(RECHECK) else "verification"
        log.info("butter: verify %s %s (%s of template reply at node %s): %s", fmt, model, what,
                 hit.node_id.hex()[:12], result.detail if what == "verification" else "forwarded")
        return hit

    def after_serve(self, flow: http.HTTPFlow, hit: Hit) -> None:
        """Maybe re-ask the provider for this served template hit, off the request path."""
        if hit.trust not in self.sampled or flow.metadata.get(OPTED_OUT):
            return
        o = ctx.options
        rates = [o.butter_verify_sample] + ([o.butter_verify_inputs_sample] if hit.trust == "new-inputs" else [])
        rates = [r for r in rates if r > 0]
        if not rates:
            return
        self.sampled[hit.trust] += 1
        if self.sampled[hit.trust] % min(rates):
            return
        copy = flow.copy()  # in memory only: the client's credential is never written anywhere
        copy.metadata[RECHECK] = True
        try:
            ctx.master.commands.call("replay.client", [copy])
        except Exception as e:  # no replay available (an embedding without it): skip the re-check
            log.warning("butter: a sampled re-check could not be sent: %r", e)

    def conclude(self, cache, fmt: str, model, hit: Hit, reply: dict) -> None:
        """Compare the provider's answer with the template's (on the writer thread) and log it."""
        outcome = trust_ledger.conclude(cache.backend, hit, reply, cache.trust)
        entry = outcome.entry or {}
        node = hit.node_id.hex()[:12]
        if outcome.event == "not comparable":
            log.info("butter: verified %s %s: the template reply at node %s could not be compared (%s)",
                     fmt, model, node, outcome.why)
        elif outcome.agreed:
            log.info("butter: verified %s %s: the provider agreed with the template reply at node %s (%s; %d of "
                     "%d agreements)", fmt, model, node, outcome.event, entry.get("agreements", 0), cache.trust.needed)
        elif outcome.event == "rewritten":
            log.info("butter: verified %s %s: the model wrote a value its own way in a tool call; the template reply "
                     "at node %s stays, and is not served for that value", fmt, model, node)
            log.debug("butter: verification of node %s: %s", node, outcome.why)
        else:
            # Which values and words differ is conversation content: debug only.
            log.info("butter: verified %s %s: the provider disagreed with the template reply at node %s (%s)",
                     fmt, model, node, outcome.event)
            log.debug("butter: verification of node %s: %s", node, outcome.why)
        if outcome.also:
            log.info("butter: verified %s %s: the same answer judged %d other matching template repl%s (%s)",
                     fmt, model, len(outcome.also), "y" if len(outcome.also) == 1 else "ies", ", ".join(outcome.also))
