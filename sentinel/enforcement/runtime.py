"""Deny rules at run time: compiled to a BPF LSM policy and enforced, or, where BPF LSM is not
available, refused, run as alerts, or enforced by killing the offending process
(``enforcement.unavailable``); reloads replace the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentinel.logging import get_logger

KERNEL_MODES = ("enforced", "killing")  # deny rules decided by kernel programs


class EnforcementError(Exception):
    """Deny rules that cannot be enforced as loaded (the message says why)."""


class Enforcement:
    """Deny rules: compiled to a BPF LSM policy and enforced, or, where BPF LSM is not
    available, refused, run as alerts, or enforced by kills (``enforcement.unavailable``).

    A reload goes through :meth:`make_engine` too, with the same rules as at start: new deny
    rules that cannot be compiled or resolved, or that BPF LSM cannot enforce under
    ``unavailable: refuse``, reject the whole reload (the old rules and the old policy keep
    running). Otherwise the kernel policy is replaced atomically (``LsmEnforcer.update``), or
    the programs are attached if this is the first reload with deny rules. Removing every deny
    rule leaves the programs attached with an empty policy: they then return at once, and a
    later reload can protect again without a new compile (which pauses the event loop).
    """

    def __init__(
        self,
        config: Any,
        build_engine: Callable[[Any, Any], Any],
        log: Any = None,
    ) -> None:
        self.config = config
        self.build_engine = build_engine  # (compiled rules, config) -> engine
        self.log = log if log is not None else get_logger("sentinel.enforcement")
        self.ok = True
        self.mode = "none"  # none | enforced | killing | unenforced
        self.plan: Any = None  # the MapPlan to enforce (enforced and killing modes)
        self.enforcer: Any = None
        self._emit: Callable[[Any], Any] | None = None
        # (engine, rules by name), newest first: a denial of an older generation may still be
        # in the ring buffer after a reload, and its alert needs that generation's rule.
        self._engines: list[tuple[Any, dict[str, Any]]] = []

    def make_engine(self, compiled: Any, config: Any) -> Any:
        """The engine without the deny rules the kernel enforces (each denial is reported
        once, by the LSM program), or with them marked deny-unenforced. On a reload, also
        installs the new deny policy (raising EnforcementError rejects the reload)."""
        import dataclasses

        reloading = bool(self._engines)
        deny = [r for r in compiled.enabled if r.action == "deny"]
        try:
            mode, plan = self._prepare(deny)
        except EnforcementError as exc:
            if reloading:
                self.log.error(f"reload rejected, the old rules and deny policy stay: {exc}")
                raise
            self.log.error(str(exc))
            self.ok = False
            mode, plan = self.mode, None
        rules = []
        for r in compiled.rules:
            if r.action == "deny" and mode in KERNEL_MODES:
                r = dataclasses.replace(r, enabled=False)
            elif r.action == "deny":
                r = dataclasses.replace(r, action="deny-unenforced")
            rules.append(r)
        engine = self.build_engine(dataclasses.replace(compiled, rules=rules), config)
        if reloading and mode in KERNEL_MODES:
            self._apply(plan, mode)
        self.mode, self.plan = mode, plan
        self._engines = [(engine, {r.name: r for r in engine.compiled.rules}), *self._engines][:3]
        return engine

    def _prepare(self, deny: list[Any]) -> tuple[str, Any]:
        """(mode, MapPlan or None) for these deny rules; EnforcementError if they cannot run."""
        from sentinel.enforcement.deny import DenyCompileError, compile_deny
        from sentinel.enforcement.lsm import LsmError
        from sentinel.enforcement.policy import MapPlan, PolicyError, build_plan

        mode = self.mode
        if not deny:
            # Nothing to deny: an attached enforcer keeps running with an empty policy.
            return mode, (MapPlan() if mode in KERNEL_MODES else None)
        try:
            spec = compile_deny([(r.name, r.expr) for r in deny])
        except DenyCompileError as exc:
            raise EnforcementError(str(exc)) from None
        if mode == "none":
            mode = self._decide()
        if mode not in KERNEL_MODES:
            return mode, None
        try:
            return mode, build_plan(spec.to_policy())
        except (PolicyError, LsmError) as exc:
            raise EnforcementError(str(exc)) from None

    def _decide(self) -> str:
        from sentinel.enforcement.probe import lsm_available

        available, why = lsm_available()
        if available:
            return "enforced"
        if self.config.enforcement.unavailable == "refuse":
            raise EnforcementError(
                f"deny rules are loaded but BPF LSM is unavailable: {why}; "
                "set enforcement.unavailable: alert to run them as alerts, or kill to kill "
                "the offending process instead"
            )
        if self.config.enforcement.unavailable == "kill":
            self.log.warning(
                f"BPF LSM is unavailable ({why}): deny rules are enforced by killing the "
                "offending process after the system call (action kill); what that stops and "
                "what it cannot is in the README (Enforcement)"
            )
            return "killing"
        self.log.warning(
            f"BPF LSM is unavailable ({why}): deny rules are NOT enforced, only "
            "alerted on (action deny-unenforced)"
        )
        return "unenforced"

    def _apply(self, plan: Any, mode: str) -> None:
        """Install a reloaded policy: update the running enforcer, or attach one."""
        from sentinel.enforcement.kill import KillError
        from sentinel.enforcement.lsm import LsmError
        from sentinel.enforcement.policy import PolicyError

        try:
            if self.enforcer is not None:
                self.enforcer.update(plan)
                self.log.info(
                    "deny policy reloaded" if plan.rules else "deny policy lifted (no deny rules)",
                    rules=len(plan.rules),
                    generation=self.enforcer.generation,
                )
            elif self._emit is not None:
                self.log.info("attaching the enforcement programs for the reloaded deny rules")
                self._attach(plan, mode)
        except (LsmError, KillError, PolicyError) as exc:
            self.log.error(f"reload rejected, the old rules and deny policy stay: {exc}")
            raise EnforcementError(str(exc)) from None

    def _on_deny(self, ev: Any) -> None:
        assert self._emit is not None
        for engine, by_name in self._engines:
            rule = by_name.get(ev.rule)
            if rule is not None:
                self._emit(engine.alert(rule, ev.fields(), action=ev.action))
                return

    def _attach(self, plan: Any, mode: str) -> None:
        if mode == "killing":
            from sentinel.enforcement.kill import KillEnforcer

            self.enforcer = KillEnforcer(plan, self._on_deny)
        else:
            from sentinel.enforcement.lsm import LsmEnforcer

            self.enforcer = LsmEnforcer(plan, self._on_deny)
        for note in self.enforcer.notes:
            self.log.warning(note)
        self.log.info(
            "enforcing",
            rules=len(plan.rules),
            programs=len(self.enforcer.attached),
            action="kill" if mode == "killing" else "deny",
        )

    def start(self, emit: Callable[[Any], Any]) -> bool:
        """Attach the programs if deny rules are enforced; False (logged) if that failed."""
        from sentinel.enforcement.kill import KillError
        from sentinel.enforcement.lsm import LsmError

        self._emit = emit
        if self.mode not in KERNEL_MODES or self.plan is None or not self.plan.rules:
            return True
        try:
            self._attach(self.plan, self.mode)
        except (LsmError, KillError) as exc:
            self.log.error(f"enforcement did not start: {exc}")
            return False
        return True

    def programs(self) -> dict[str, int]:
        """The attached enforcer's program fds (none when nothing is enforced in the kernel)."""
        enforcer = self.enforcer
        return enforcer.programs() if enforcer is not None else {}

    def summary(self) -> dict[str, Any]:
        return {"deny_rules": self.mode}

    def close(self) -> None:
        if self.enforcer is not None:
            self.enforcer.close()
            self.enforcer = None
