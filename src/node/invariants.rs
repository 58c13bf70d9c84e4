//! The rules a server's state keeps after every input (TigerBeetle's `invariants()`).
//! Checked at the end of every `handle_*` in debug builds, and by the simulator after
//! every step in every build. Each rule has a name, which a failure reports.

use super::ballot::BallotState;
use super::role::RoleState;
use super::Node;
use crate::proto::limits::MAX_OPEN_BALLOTS;
use crate::proto::View;
use std::fmt;

/// A broken invariant: which, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub rule: &'static str,
    pub detail: String,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

fn rule(name: &'static str, holds: bool, detail: impl FnOnce() -> String) -> Result<(), Broken> {
    if holds {
        Ok(())
    } else {
        Err(Broken {
            rule: name,
            detail: detail(),
        })
    }
}

impl Node {
    pub fn invariants(&self) -> Result<(), Broken> {
        self.ballot_invariants()?;
        self.registry_invariants()?;
        self.view_invariants()?;
        self.role_invariants()
    }

    fn ballot_invariants(&self) -> Result<(), Broken> {
        self.ballots
            .check(self.committed())
            .map_err(|detail| Broken {
                rule: "ballots-contiguous-and-counted",
                detail,
            })?;
        rule(
            "open-ballots-bounded",
            self.ballots.len() as u64 <= MAX_OPEN_BALLOTS,
            || format!("{} open", self.ballots.len()),
        )?;
        let clients = self.registry.len() as u32;
        if let Some(b) = self.ballots.iter().find(|b| b.bound() > clients) {
            return rule("electorate-registered", false, || {
                format!("ballot {} has voters beyond the {clients} clients", b.seq)
            });
        }
        if self.role.has_stepped_down() {
            // It acts on nothing more; what it was in the middle of stays as it was.
            return Ok(());
        }
        let committing = self
            .ballots
            .iter()
            .any(|b| b.state == BallotState::Committing);
        rule(
            "committing-only-with-a-backup",
            !committing || self.commit_backup().is_some(),
            || "a ballot waits for a CommitAck in a view without a backup".into(),
        )?;
        let all_open = self.ballots.iter().all(|b| b.state == BallotState::Open);
        rule(
            "only-a-primary-commits",
            self.role.is_primary() || all_open,
            || format!("a {} holds a committing ballot", self.role.wire()),
        )
    }

    fn registry_invariants(&self) -> Result<(), Broken> {
        self.registry.check().map_err(|detail| Broken {
            rule: "registry-consistent",
            detail,
        })?;
        rule(
            "a-lease-per-client",
            self.leases.len() == self.registry.len(),
            || {
                format!(
                    "{} leases for {} clients",
                    self.leases.len(),
                    self.registry.len()
                )
            },
        )?;
        rule(
            "members-registered",
            self.views.members.bound() as usize <= self.registry.len(),
            || format!("a member beyond the {} clients", self.registry.len()),
        )?;
        rule(
            "leases-counted-over-the-members",
            self.leases.members() == &self.views.members,
            || "the lease majority is counted over other clients than the members".into(),
        )
    }

    fn view_invariants(&self) -> Result<(), Broken> {
        let installed = self.views.installed.number;
        rule(
            "highest-seen-covers-installed",
            self.views.highest_seen() >= installed,
            || {
                format!(
                    "highest {} below installed {installed}",
                    self.views.highest_seen()
                )
            },
        )?;
        let Some(p) = &self.views.proposal else {
            return Ok(());
        };
        // View numbers saturate (a peer may name the largest): past it nothing is proposed
        // above, and the server stalls rather than reuse a number.
        let above = p.view.number > installed || installed == View(u64::MAX);
        rule(
            "proposal-above-installed",
            above && p.view.number <= self.views.highest_seen(),
            || format!("proposing {} with {installed} installed", p.view.number),
        )?;
        rule(
            "proposal-names-us-primary",
            p.view.primary == self.cfg.listen,
            || format!("proposing {}", p.view),
        )?;
        rule(
            "proposal-built-on-the-installed-members",
            p.base == self.views.members,
            || "the proposal counts its base majority over other members".into(),
        )?;
        rule(
            "proposal-members-registered",
            p.members.bound() as usize <= self.registry.len()
                && p.accepted.bound() as usize <= self.registry.len(),
            || format!("proposal names clients beyond the {}", self.registry.len()),
        )?;
        rule("proposal-counts-its-accepts", p.counts_hold(), || {
            "in_base, in_members or joiners_waiting differs from a recount".into()
        })
    }

    fn role_invariants(&self) -> Result<(), Broken> {
        match &self.role {
            RoleState::Primary(primary) => {
                rule(
                    "primary-of-its-view",
                    self.views.installed.primary == self.cfg.listen,
                    || format!("primary in {}", self.views.installed),
                )?;
                rule(
                    "forwards-need-a-peer",
                    primary.pending_forward.is_empty() || self.peer.is_some(),
                    || {
                        format!(
                            "{} votes to forward, no peer",
                            primary.pending_forward.len()
                        )
                    },
                )?;
                let backup = primary.pending_install.as_ref().map(|i| i.view.backup);
                rule(
                    "install-pending-for-a-backup",
                    backup.is_none_or(|b| b.is_some()),
                    || "a pending install without a backup".into(),
                )
            }
            RoleState::Backup => rule(
                "backup-of-its-view",
                self.views.installed.backup == Some(self.cfg.listen),
                || format!("backup in {}", self.views.installed),
            ),
            RoleState::Joining(_) => rule(
                "a-joiner-proposes-nothing",
                self.views.proposal.is_none(),
                || "a joiner with a proposal".into(),
            ),
            RoleState::SteppedDown { .. } => {
                rule("stepped-down-is-silent", self.timers.is_empty(), || {
                    format!("timers still armed: {:?}", self.timers)
                })
            }
        }
    }
}
