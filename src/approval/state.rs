//! One approval request and its life, as pure functions of (request, time, who): pending →
//! approved | denied | expired; approved → consumed | expired. No I/O and no clock reads here:
//! callers pass `now`, so every transition is tested exhaustively; nothing here may decide who
//! is an approver (the rule does) or persist anything (the store does).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Consumed => "consumed",
        }
    }
}

/// Someone named in a request: object id and, for display, the UPN from their token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub oid: String,
    pub upn: Option<String>,
}

/// An approval request as stored (JSON) and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: String,
    pub state: State,
    pub policy: String,
    pub action: String,
    pub managed_device_id: String,
    /// The device's platform and owner as Graph reported them when the request was opened.
    pub platform: String,
    pub device_owner: Option<String>,
    pub requester: Person,
    /// The `Passgate-Justification` the requester gave, when the policy reads one.
    #[serde(default)]
    pub justification: Option<String>,
    /// The gateway request that opened it.
    pub opened_by_request: String,
    pub created_at: DateTime<Utc>,
    pub pending_until: DateTime<Utc>,
    pub decided_by: Option<Person>,
    pub decided_at: Option<DateTime<Utc>>,
    pub comment: Option<String>,
    /// Set when approved: the approval can be used until then.
    pub valid_until: Option<DateTime<Utc>>,
    pub consumed_at: Option<DateTime<Utc>>,
    pub consumed_by_request: Option<String>,
    /// The requester has been told it was denied or expired: the next attempt opens a new one.
    #[serde(default)]
    pub closed: bool,
}

/// What an operator's attempt finds for its (operator, device, action, policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing open: open a new request.
    Nothing,
    /// Still waiting for an approver.
    Pending,
    /// Approved and usable now.
    Usable,
    /// Denied; tell the requester once (then it is closed).
    Denied,
    /// Expired (never decided in time, or approved but not used in time); tell them once.
    Expired,
}

/// Why an approver's decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideRefusal {
    SelfApproval,
    NotPending(State),
}

/// Why a use failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseRefusal {
    NotUsable(State),
}

impl ApprovalRequest {
    /// The state as of `now`: a pending request past `pending_until` and an approval past
    /// `valid_until` have expired, whether or not anyone has written that down yet.
    pub fn state_at(&self, now: DateTime<Utc>) -> State {
        match self.state {
            State::Pending if now >= self.pending_until => State::Expired,
            State::Approved if self.valid_until.is_none_or(|v| now >= v) => State::Expired,
            s => s,
        }
    }

    /// What an operator's attempt finds.
    pub fn found_by_attempt(&self, now: DateTime<Utc>) -> Found {
        if self.closed {
            return Found::Nothing;
        }
        match self.state_at(now) {
            State::Pending => Found::Pending,
            State::Approved => Found::Usable,
            State::Denied => Found::Denied,
            State::Expired => Found::Expired,
            State::Consumed => Found::Nothing,
        }
    }

    /// The request after its requester has been told of a denial or an expiry.
    pub fn closed_at(&self, now: DateTime<Utc>) -> ApprovalRequest {
        let mut next = self.clone();
        next.state = self.state_at(now);
        next.closed = true;
        next
    }

    /// An approver's decision. Who may approve at all is the rule's business; this refuses only
    /// what is wrong whoever asks: approving one's own request, or one no longer pending.
    pub fn decided(
        &self,
        approver: &Person,
        approve: bool,
        comment: Option<String>,
        valid_for: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<ApprovalRequest, DecideRefusal> {
        if approver.oid.eq_ignore_ascii_case(&self.requester.oid) {
            return Err(DecideRefusal::SelfApproval);
        }
        let state = self.state_at(now);
        if state != State::Pending {
            return Err(DecideRefusal::NotPending(state));
        }
        let mut next = self.clone();
        next.state = if approve {
            State::Approved
        } else {
            State::Denied
        };
        next.decided_by = Some(approver.clone());
        next.decided_at = Some(now);
        next.comment = comment;
        if approve {
            let valid = chrono::Duration::from_std(valid_for).unwrap_or(chrono::Duration::zero());
            next.valid_until = Some(now + valid);
        }
        Ok(next)
    }

    /// The one use of an approval, by gateway request `request_id`.
    pub fn used(
        &self,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ApprovalRequest, UseRefusal> {
        let state = self.state_at(now);
        if state != State::Approved || self.closed {
            return Err(UseRefusal::NotUsable(state));
        }
        let mut next = self.clone();
        next.state = State::Consumed;
        next.consumed_at = Some(now);
        next.consumed_by_request = Some(request_id.to_string());
        Ok(next)
    }

    /// Undoes [`ApprovalRequest::used`] for `request_id` (its allow record could not be written,
    /// so nothing was forwarded): the approval is usable again until it expires.
    pub fn unused(&self, request_id: &str) -> Option<ApprovalRequest> {
        if self.state != State::Consumed || self.consumed_by_request.as_deref() != Some(request_id)
        {
            return None;
        }
        let mut next = self.clone();
        next.state = State::Approved;
        next.consumed_at = None;
        next.consumed_by_request = None;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn person(oid: &str) -> Person {
        Person {
            oid: oid.into(),
            upn: None,
        }
    }

    fn request() -> ApprovalRequest {
        ApprovalRequest {
            id: "a1".into(),
            state: State::Pending,
            policy: "p".into(),
            action: "recoverPasscode".into(),
            managed_device_id: "d".into(),
            platform: "Windows Phone".into(),
            device_owner: None,
            requester: person("alice"),
            justification: None,
            opened_by_request: "r0".into(),
            created_at: t(0),
            pending_until: t(100),
            decided_by: None,
            decided_at: None,
            comment: None,
            valid_until: None,
            consumed_at: None,
            consumed_by_request: None,
            closed: false,
        }
    }

    const VALID: Duration = Duration::from_secs(30);

    #[test]
    fn pending_until_expiry_then_expired_and_told_once() {
        let r = request();
        assert_eq!(r.found_by_attempt(t(99)), Found::Pending);
        assert_eq!(r.found_by_attempt(t(100)), Found::Expired);
        let closed = r.closed_at(t(100));
        assert_eq!((closed.state, closed.closed), (State::Expired, true));
        assert_eq!(closed.found_by_attempt(t(101)), Found::Nothing);
        assert_eq!(
            r.decided(&person("bob"), true, None, VALID, t(100)),
            Err(DecideRefusal::NotPending(State::Expired))
        );
    }

    #[test]
    fn approval_is_usable_once_within_valid_for() {
        let r = request();
        let ok = r
            .decided(&person("bob"), true, Some("ok".into()), VALID, t(10))
            .unwrap();
        assert_eq!(ok.state, State::Approved);
        assert_eq!(ok.valid_until, Some(t(40)));
        assert_eq!(ok.found_by_attempt(t(39)), Found::Usable);
        assert_eq!(ok.found_by_attempt(t(40)), Found::Expired);
        let used = ok.used("r1", t(20)).unwrap();
        assert_eq!(
            used.found_by_attempt(t(21)),
            Found::Nothing,
            "one approval, one use"
        );
        assert_eq!(
            used.used("r2", t(21)),
            Err(UseRefusal::NotUsable(State::Consumed))
        );
        assert_eq!(
            ok.used("r1", t(40)),
            Err(UseRefusal::NotUsable(State::Expired))
        );
        // A use whose allow record failed is given back, to that request only.
        assert_eq!(used.unused("r2"), None);
        assert_eq!(used.unused("r1").unwrap(), ok);
    }

    #[test]
    fn denial_is_reported_once_and_nobody_approves_their_own() {
        let r = request();
        assert_eq!(
            r.decided(&person("ALICE"), true, None, VALID, t(1)),
            Err(DecideRefusal::SelfApproval)
        );
        let no = r.decided(&person("bob"), false, None, VALID, t(1)).unwrap();
        assert_eq!(no.found_by_attempt(t(2)), Found::Denied);
        assert_eq!(no.valid_until, None);
        assert_eq!(
            no.used("r1", t(2)),
            Err(UseRefusal::NotUsable(State::Denied))
        );
        assert_eq!(
            no.decided(&person("carol"), true, None, VALID, t(2)),
            Err(DecideRefusal::NotPending(State::Denied))
        );
        assert_eq!(no.closed_at(t(2)).found_by_attempt(t(3)), Found::Nothing);
    }

    #[test]
    fn every_state_answers_an_attempt_and_a_use_consistently() {
        let base = request();
        for state in [
            State::Pending,
            State::Approved,
            State::Denied,
            State::Expired,
            State::Consumed,
        ] {
            for closed in [false, true] {
                let mut r = base.clone();
                r.state = state;
                r.closed = closed;
                r.valid_until = Some(t(50));
                let found = r.found_by_attempt(t(10));
                let usable = r.used("x", t(10)).is_ok();
                assert_eq!(usable, found == Found::Usable, "{state:?} closed={closed}");
                if closed {
                    assert_eq!(found, Found::Nothing);
                }
            }
        }
    }
}
