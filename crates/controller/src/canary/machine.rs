//! The analysis of one canary stage as a pure state machine: given an interval's counts of both
//! tracks and the time, hold, step up, promote or roll back. No IO; the clock is an argument.

use std::collections::VecDeque;
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tollgate_crds::{CanaryPhase, CanaryStatus, CanaryStep};
use tollgate_ir::canary::{Analysis, TrackCounts, Weight};

/// How many decisions status keeps.
pub const HISTORY: usize = 10;

/// What both tracks served during one interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// The canary track.
    pub canary: TrackCounts,
    /// The stable track.
    pub stable: TrackCounts,
}

/// What an evaluation decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Too few canary requests to judge: the weight stays.
    Held,
    /// Healthy: the weight went up by `stepWeight`.
    Stepped,
    /// Healthy at `maxWeight`: stepping is over; finish in git.
    Promoted,
    /// Out of bounds: the weight went to 0.
    RolledBack,
}

impl Verdict {
    /// The Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Held => "CanaryHeld",
            Verdict::Stepped => "CanaryStepped",
            Verdict::Promoted => "CanaryPromoted",
            Verdict::RolledBack => "CanaryRolledBack",
        }
    }

    /// Whether the weight or the phase changed (a step worth an Event and a history entry).
    pub fn is_step(self) -> bool {
        self != Verdict::Held
    }
}

/// One evaluation's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// What was decided.
    pub verdict: Verdict,
    /// The effective weight after it.
    pub weight: Weight,
    /// Why, with the figures of both tracks.
    pub message: String,
}

/// The analysis state of one canary stage.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryState {
    /// The stage's name (for the promotion instruction).
    pub stage: String,
    /// The canary revision this state belongs to.
    pub revision: String,
    /// The phase.
    pub phase: CanaryPhase,
    /// The effective weight.
    pub weight: Weight,
    /// The latest decision.
    pub last_decision: Option<String>,
    /// When the weight or phase last changed.
    pub changed_at: SystemTime,
    /// When the current interval ends.
    pub next_evaluation: SystemTime,
    /// The latest steps, oldest first.
    pub history: VecDeque<(SystemTime, Weight, String)>,
}

impl CanaryState {
    /// A fresh analysis at the spec's weight (`stepWeight` when that is 0); the first interval
    /// starts `now`.
    pub fn start(
        stage: &str,
        revision: &str,
        spec_weight: Weight,
        settings: &Analysis,
        now: SystemTime,
    ) -> Self {
        let spec_weight = settings.start_weight(spec_weight);
        CanaryState {
            stage: stage.to_string(),
            revision: revision.to_string(),
            phase: CanaryPhase::Progressing,
            weight: spec_weight,
            last_decision: Some(format!(
                "analysis started at {} %: judged every {}",
                pct(spec_weight),
                human(settings.interval.as_duration())
            )),
            changed_at: now,
            next_evaluation: now + settings.interval.as_duration(),
            history: VecDeque::new(),
        }
    }

    /// The state recorded in `status` when it belongs to `revision` (a controller restart or a
    /// new leader carries on where the last one stopped); otherwise a fresh start.
    pub fn resume(
        stage: &str,
        revision: &str,
        spec_weight: Weight,
        settings: &Analysis,
        status: Option<&CanaryStatus>,
        now: SystemTime,
    ) -> Self {
        let mut state = CanaryState::start(stage, revision, spec_weight, settings, now);
        let Some(status) = status.filter(|s| s.revision.as_deref() == Some(revision)) else {
            return state;
        };
        state.phase = status.phase.unwrap_or(CanaryPhase::Progressing);
        state.weight = match state.phase {
            CanaryPhase::RolledBack => Weight(0),
            _ => status
                .effective_weight
                .map(Weight::from_percent)
                .unwrap_or(settings.start_weight(spec_weight)),
        };
        state.last_decision = status.last_decision.clone();
        state.changed_at = status.last_transition_time.as_ref().map(|t| SystemTime::from(t.0)).unwrap_or(now);
        state.history = status
            .history
            .iter()
            .map(|s| {
                let time = s.time.as_ref().map(|t| SystemTime::from(t.0)).unwrap_or(now);
                (time, Weight::from_percent(s.weight), s.decision.clone())
            })
            .collect();
        state
    }

    /// Judges the interval that ended, when it has (`None` before that, and once the analysis
    /// is over: promoted or rolled back until the canary spec changes).
    pub fn evaluate(&mut self, settings: &Analysis, window: &Window, now: SystemTime) -> Option<Decision> {
        if self.phase != CanaryPhase::Progressing || now < self.next_evaluation {
            return None;
        }
        self.next_evaluation = now + settings.interval.as_duration();
        let (canary, stable) = (&window.canary, &window.stable);
        let figures = format!(
            "canary: {} requests, {:.2} % 5xx, p99 {}; stable: {} requests, {:.2} % 5xx, p99 {}",
            canary.requests,
            canary.error_rate(),
            p99(canary),
            stable.requests,
            stable.error_rate(),
            p99(stable),
        );
        let (verdict, weight, message) = if canary.requests < settings.min_requests {
            let message = format!(
                "held at {} %: {} canary requests in the last {}, fewer than minRequests {} ({figures})",
                pct(self.weight),
                canary.requests,
                human(settings.interval.as_duration()),
                settings.min_requests
            );
            (Verdict::Held, self.weight, message)
        } else if canary.error_rate() > settings.max_error_rate {
            let message = format!(
                "rolled back from {} % to 0 %: canary error rate {:.2} % ({} of {} requests answered 5xx) is above \
                 maxErrorRate {} % ({figures})",
                pct(self.weight),
                canary.error_rate(),
                canary.errors,
                canary.requests,
                settings.max_error_rate
            );
            (Verdict::RolledBack, Weight(0), message)
        } else if let (Some(max), Some(actual)) = (settings.max_p99_latency, canary.p99_ms())
            && actual > max.0 as f64
        {
            let message = format!(
                "rolled back from {} % to 0 %: canary p99 latency {actual:.0} ms is above maxP99Latency {} ms \
                 ({figures})",
                pct(self.weight),
                max.0
            );
            (Verdict::RolledBack, Weight(0), message)
        } else {
            let next =
                Weight(self.weight.0.saturating_add(settings.step_weight.0).min(settings.max_weight.0));
            if next >= settings.max_weight {
                let message = format!(
                    "promoted at {} %: the canary stayed within bounds ({figures}). {}",
                    pct(next),
                    self.promotion_instruction()
                );
                (Verdict::Promoted, next, message)
            } else {
                let message = format!(
                    "stepped from {} % to {} %: within bounds ({figures})",
                    pct(self.weight),
                    pct(next)
                );
                (Verdict::Stepped, next, message)
            }
        };
        self.last_decision = Some(message.clone());
        if verdict.is_step() {
            self.phase = match verdict {
                Verdict::Promoted => CanaryPhase::Promoted,
                Verdict::RolledBack => CanaryPhase::RolledBack,
                _ => CanaryPhase::Progressing,
            };
            self.weight = weight;
            self.changed_at = now;
            self.history.push_back((now, weight, message.clone()));
            while self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
        Some(Decision { verdict, weight, message })
    }

    /// The git change that finishes a promotion.
    pub fn promotion_instruction(&self) -> String {
        format!(
            "To finish the promotion in git: if the canary overrides variables, move canary.variables into the \
             stage's variables; if it selects Routes of its own, make them the stable ones (drop the label the \
             canary selects them by, delete the Routes they replace); then remove stages[{}].canary (or set its \
             weight to 0 until the next release).",
            self.stage
        )
    }

    /// The status of this state.
    pub fn status(&self) -> CanaryStatus {
        CanaryStatus {
            phase: Some(self.phase),
            effective_weight: Some(self.weight.percent()),
            last_decision: self.last_decision.clone(),
            promotion: (self.phase == CanaryPhase::Promoted).then(|| self.promotion_instruction()),
            revision: Some(self.revision.clone()),
            last_transition_time: time(self.changed_at),
            history: self
                .history
                .iter()
                .map(|(at, weight, decision)| CanaryStep {
                    time: time(*at),
                    weight: weight.percent(),
                    decision: decision.clone(),
                })
                .collect(),
        }
    }
}

fn time(at: SystemTime) -> Option<Time> {
    Timestamp::try_from(at).ok().map(Time)
}

fn pct(weight: Weight) -> String {
    format!("{}", weight.percent())
}

fn p99(counts: &TrackCounts) -> String {
    counts.p99_ms().map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "n/a".to_string())
}

fn human(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tollgate_ir::Millis;

    use super::*;

    fn settings() -> Analysis {
        Analysis {
            interval: Millis(60_000),
            step_weight: Weight::from_percent(10.0),
            max_weight: Weight::from_percent(50.0),
            max_error_rate: 1.0,
            max_p99_latency: Some(Millis(500)),
            min_requests: 100,
        }
    }

    fn counts(requests: u64, errors: u64, millis: f64) -> TrackCounts {
        let mut c = TrackCounts::default();
        for i in 0..requests {
            c.observe(if i < errors { 503 } else { 200 }, millis);
        }
        c
    }

    fn window(requests: u64, errors: u64, millis: f64) -> Window {
        Window { canary: counts(requests, errors, millis), stable: counts(requests * 9, 0, 5.0) }
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;
    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn healthy_canary_steps_up_each_interval_then_is_promoted_at_max_weight() {
        let s = settings();
        let mut state = CanaryState::start("prod", "r1", Weight::from_percent(10.0), &s, T0);
        assert_eq!(state.evaluate(&s, &window(500, 0, 5.0), T0 + MINUTE / 2), None, "not due yet");
        let mut weights = Vec::new();
        let mut now = T0;
        for _ in 0..4 {
            now += MINUTE;
            let decision = state.evaluate(&s, &window(500, 0, 5.0), now).unwrap_or_else(|| panic!("due"));
            weights.push((decision.verdict, decision.weight.percent()));
        }
        assert_eq!(
            weights,
            vec![
                (Verdict::Stepped, 20.0),
                (Verdict::Stepped, 30.0),
                (Verdict::Stepped, 40.0),
                (Verdict::Promoted, 50.0)
            ]
        );
        assert_eq!(state.phase, CanaryPhase::Promoted);
        assert_eq!(state.evaluate(&s, &window(500, 0, 5.0), now + MINUTE * 5), None, "over");
        let status = state.status();
        assert_eq!(status.effective_weight, Some(50.0));
        assert!(status.promotion.as_deref().is_some_and(|p| p.contains("stages[prod].canary")));
        assert_eq!(status.history.len(), 4);
        assert!(status.history[0].decision.starts_with("stepped from 10 % to 20 %"));
    }

    #[test]
    fn a_failing_canary_is_rolled_back_with_the_figures_in_the_reason() {
        let s = settings();
        let mut state = CanaryState::start("prod", "r1", Weight::from_percent(10.0), &s, T0);
        let decision =
            state.evaluate(&s, &window(500, 100, 5.0), T0 + MINUTE).unwrap_or_else(|| panic!("due"));
        assert_eq!(decision.verdict, Verdict::RolledBack);
        assert_eq!(decision.weight, Weight(0));
        assert!(
            decision.message.contains("canary error rate 20.00 % (100 of 500 requests answered 5xx)"),
            "{}",
            decision.message
        );
        assert!(decision.message.contains("stable: 4500 requests, 0.00 % 5xx"), "{}", decision.message);
        assert_eq!(state.status().phase, Some(CanaryPhase::RolledBack));
        assert_eq!(state.status().effective_weight, Some(0.0));
        assert_eq!(state.evaluate(&s, &window(500, 0, 5.0), T0 + MINUTE * 2), None, "stays rolled back");
    }

    #[test]
    fn slow_canary_is_rolled_back_on_p99_and_latency_is_not_checked_without_a_bound() {
        let s = settings();
        let mut state = CanaryState::start("prod", "r1", Weight::from_percent(10.0), &s, T0);
        let decision =
            state.evaluate(&s, &window(200, 0, 900.0), T0 + MINUTE).unwrap_or_else(|| panic!("due"));
        assert_eq!(decision.verdict, Verdict::RolledBack);
        assert!(decision.message.contains("above maxP99Latency 500 ms"), "{}", decision.message);
        let unbounded = Analysis { max_p99_latency: None, ..settings() };
        let mut state = CanaryState::start("prod", "r1", Weight::from_percent(10.0), &unbounded, T0);
        let decision =
            state.evaluate(&unbounded, &window(200, 0, 900.0), T0 + MINUTE).unwrap_or_else(|| panic!("due"));
        assert_eq!(decision.verdict, Verdict::Stepped);
    }

    #[test]
    fn too_few_requests_hold_the_weight_without_a_step() {
        let s = settings();
        let mut state = CanaryState::start("prod", "r1", Weight::from_percent(10.0), &s, T0);
        let decision = state.evaluate(&s, &window(99, 50, 5.0), T0 + MINUTE).unwrap_or_else(|| panic!("due"));
        assert_eq!(decision.verdict, Verdict::Held);
        assert_eq!(state.weight, Weight::from_percent(10.0));
        assert!(state.history.is_empty());
        assert!(decision.message.contains("fewer than minRequests 100"));
        // Error rate exactly at the bound is within it.
        let d = state.evaluate(&s, &window(100, 1, 5.0), T0 + MINUTE * 2).unwrap_or_else(|| panic!("due"));
        assert_eq!(d.verdict, Verdict::Stepped);
    }

    #[test]
    fn starting_at_max_weight_promotes_on_the_first_healthy_interval_and_history_is_bounded() {
        let s = Analysis { max_weight: Weight::from_percent(10.0), ..settings() };
        let mut state = CanaryState::start("prod", "r1", Weight::from_percent(10.0), &s, T0);
        let d = state.evaluate(&s, &window(500, 0, 5.0), T0 + MINUTE).unwrap_or_else(|| panic!("due"));
        assert_eq!((d.verdict, d.weight), (Verdict::Promoted, Weight::from_percent(10.0)));

        let tiny = Analysis { step_weight: Weight(1), max_weight: Weight::FULL, ..settings() };
        let mut state = CanaryState::start("prod", "r1", Weight(1), &tiny, T0);
        for i in 1..=30 {
            state.evaluate(&tiny, &window(500, 0, 5.0), T0 + MINUTE * i);
        }
        assert_eq!(state.history.len(), HISTORY);
        assert_eq!(state.weight, Weight(31));
    }

    #[test]
    fn a_canary_at_0_percent_starts_at_step_weight() {
        let s = settings();
        let state = CanaryState::start("prod", "r1", Weight(0), &s, T0);
        assert_eq!(state.weight, Weight::from_percent(10.0));
        assert_eq!(state.status().effective_weight, Some(10.0));
    }

    #[test]
    fn resume_carries_on_from_status_of_the_same_revision_only() {
        let s = settings();
        let mut state = CanaryState::start("prod", "r1", Weight::from_percent(10.0), &s, T0);
        state.evaluate(&s, &window(500, 0, 5.0), T0 + MINUTE);
        let status = state.status();
        let resumed =
            CanaryState::resume("prod", "r1", Weight::from_percent(10.0), &s, Some(&status), T0 + MINUTE * 3);
        assert_eq!(resumed.weight, Weight::from_percent(20.0));
        assert_eq!(resumed.history.len(), 1);
        assert_eq!(resumed.next_evaluation, T0 + MINUTE * 4);
        let fresh =
            CanaryState::resume("prod", "r2", Weight::from_percent(10.0), &s, Some(&status), T0 + MINUTE * 3);
        assert_eq!(fresh.weight, Weight::from_percent(10.0));
        assert!(fresh.history.is_empty());
    }
}
