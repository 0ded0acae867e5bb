//! The analysis of every canary stage of a snapshot: follows the compiled canaries, adds up the
//! per-track counts that arrive (from any number of proxies), and evaluates each stage when its
//! interval ends. Shared by the controller (leader) and standalone mode.

use std::collections::BTreeMap;

use tollgate_crds::CanaryStatus;
use tollgate_ir::canary::{Analysis, Track, TrackReport, Weight};
use tollgate_ir::{ObjectKey, Snapshot};

use super::clock::Clock;
use super::machine::{CanaryState, Decision, Window};

/// A stage of an API.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageId {
    /// The GatewayAPI.
    pub api: ObjectKey,
    /// The stage's name.
    pub stage: String,
}

impl std::fmt::Display for StageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} stage {}", self.api, self.stage)
    }
}

struct Stage {
    settings: Analysis,
    spec_weight: Weight,
    state: CanaryState,
    window: Window,
}

/// Every analysed canary stage.
pub struct Analyzer<C: Clock> {
    clock: C,
    stages: BTreeMap<StageId, Stage>,
}

impl<C: Clock> Analyzer<C> {
    /// No stages yet.
    pub fn new(clock: C) -> Self {
        Analyzer { clock, stages: BTreeMap::new() }
    }

    /// Follows a newly compiled snapshot: starts the analysis of new canaries (or resumes it
    /// from `status_of`, what status recorded), restarts it when a canary's revision changed,
    /// forgets stages that no longer have an analysed canary. Returns whether anything changed.
    pub fn sync(
        &mut self,
        snapshot: &Snapshot,
        status_of: impl Fn(&StageId) -> Option<CanaryStatus>,
    ) -> bool {
        let now = self.clock.now();
        let mut seen = BTreeMap::new();
        for api in &snapshot.apis {
            for stage in &api.stages {
                let Some(canary) = &stage.canary else { continue };
                let Some(settings) = &canary.analysis else { continue };
                let id = StageId { api: api.key.clone(), stage: stage.name.clone() };
                seen.insert(id, (settings.clone(), canary.spec_weight, canary.revision.clone()));
            }
        }
        let before = self.stages.len();
        self.stages.retain(|id, _| seen.contains_key(id));
        let mut changed = before != self.stages.len();
        for (id, (settings, spec_weight, revision)) in seen {
            match self.stages.get_mut(&id) {
                Some(stage) if stage.state.revision == revision => {
                    // Same canary: keep the state, take new settings (e.g. thresholds).
                    stage.settings = settings;
                }
                _ => {
                    let status = status_of(&id);
                    let state = CanaryState::resume(
                        &id.stage,
                        &revision,
                        spec_weight,
                        &settings,
                        status.as_ref(),
                        now,
                    );
                    self.stages.insert(id, Stage { settings, spec_weight, state, window: Window::default() });
                    changed = true;
                }
            }
        }
        changed
    }

    /// Adds counts reported by a proxy (counts of another canary revision are dropped).
    pub fn record(&mut self, reports: &[TrackReport]) {
        for report in reports {
            let id = StageId { api: report.api.clone(), stage: report.stage.clone() };
            let Some(stage) = self.stages.get_mut(&id) else { continue };
            if stage.state.revision != report.revision {
                continue;
            }
            match report.track {
                Track::Canary => stage.window.canary.add(&report.counts),
                Track::Stable => stage.window.stable.add(&report.counts),
            }
        }
    }

    /// Evaluates every stage whose interval ended; each judged interval's counts start over.
    pub fn tick(&mut self) -> Vec<(StageId, Decision)> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for (id, stage) in &mut self.stages {
            if let Some(decision) = stage.state.evaluate(&stage.settings, &stage.window, now) {
                stage.window = Window::default();
                out.push((id.clone(), decision));
            } else if stage.state.phase != tollgate_crds::CanaryPhase::Progressing {
                // Over (promoted or rolled back): nothing to gather.
                stage.window = Window::default();
            }
        }
        out
    }

    /// The status of every analysed stage.
    pub fn statuses(&self) -> BTreeMap<StageId, CanaryStatus> {
        self.stages.iter().map(|(id, s)| (id.clone(), s.state.status())).collect()
    }

    /// The status of one stage.
    pub fn status(&self, id: &StageId) -> Option<CanaryStatus> {
        self.stages.get(id).map(|s| s.state.status())
    }

    /// The canaries of `snapshot` for `/config`: per stage, the weights, the track's routes and,
    /// with analysis, its phase, last decision and steps.
    pub fn view(&self, snapshot: &Snapshot) -> serde_json::Value {
        let mut out = Vec::new();
        for api in &snapshot.apis {
            for stage in &api.stages {
                let Some(canary) = &stage.canary else { continue };
                let id = StageId { api: api.key.clone(), stage: stage.name.clone() };
                let status = self.status(&id);
                out.push(serde_json::json!({
                    "api": api.key.to_string(),
                    "stage": stage.name,
                    "specWeight": canary.spec_weight.percent(),
                    "effectiveWeight": canary.weight.percent(),
                    "phase": status.as_ref().and_then(|s| s.phase),
                    "lastDecision": status.as_ref().and_then(|s| s.last_decision.clone()),
                    "promotion": status.as_ref().and_then(|s| s.promotion.clone()),
                    "history": status.map(|s| s.history).unwrap_or_default(),
                    "revision": canary.revision,
                    "sticky": canary.sticky,
                    "forceHeader": canary.force_header,
                    "useStageCache": canary.use_stage_cache,
                    "routes": canary.routes.iter().map(|r| r.key.to_string()).collect::<Vec<_>>(),
                }));
            }
        }
        serde_json::Value::Array(out)
    }

    /// The spec weight of a stage (what a fresh start would serve).
    pub fn spec_weight(&self, id: &StageId) -> Option<Weight> {
        self.stages.get(id).map(|s| s.spec_weight)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tollgate_ir::canary::CanaryTrack;
    use tollgate_ir::{Millis, Redacted};

    use super::super::clock::ManualClock;
    use super::super::machine::Verdict;
    use super::*;

    fn snapshot(revision: &str) -> Snapshot {
        let canary = CanaryTrack {
            weight: Weight::from_percent(10.0),
            spec_weight: Weight::from_percent(10.0),
            revision: revision.into(),
            sticky: false,
            force_header: None,
            use_stage_cache: false,
            key: Redacted::default(),
            variables: Default::default(),
            routes: vec![],
            analysis: Some(Analysis {
                interval: Millis(1000),
                step_weight: Weight::from_percent(20.0),
                max_weight: Weight::from_percent(50.0),
                max_error_rate: 1.0,
                max_p99_latency: None,
                min_requests: 10,
            }),
        };
        Snapshot {
            apis: vec![tollgate_ir::Api {
                key: ObjectKey::new("shop", "shop"),
                generation: 1,
                fleet: "default".into(),
                hostnames: vec![],
                limits: Default::default(),
                stages: vec![tollgate_ir::Stage {
                    name: "prod".into(),
                    hostnames: vec![],
                    base_path: None,
                    variables: Default::default(),
                    access_log: true,
                    routes: vec![],
                    traffic: Default::default(),
                    canary: Some(canary),
                }],
                traffic: Default::default(),
                auth: Default::default(),
                web_socket: None,
            }],
            ..Snapshot::default()
        }
    }

    fn report(track: Track, requests: u64, errors: u64, revision: &str) -> TrackReport {
        crate::canary::test_report(track, requests, errors, revision)
    }

    #[test]
    fn reports_of_several_proxies_add_up_and_are_judged_per_interval() {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
        let mut analyzer = Analyzer::new(clock.clone());
        assert!(analyzer.sync(&snapshot("r1"), |_| None));
        assert!(!analyzer.sync(&snapshot("r1"), |_| None), "same revision: nothing changes");
        // Two proxies, 6 canary requests each: 12 ≥ minRequests 10 only together.
        analyzer.record(&[report(Track::Canary, 6, 0, "r1"), report(Track::Stable, 50, 0, "r1")]);
        analyzer.record(&[report(Track::Canary, 6, 0, "r1"), report(Track::Canary, 100, 100, "old")]);
        assert!(analyzer.tick().is_empty(), "interval not over");
        clock.advance(Duration::from_secs(1));
        let decisions = analyzer.tick();
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].1.verdict, Verdict::Stepped, "{}", decisions[0].1.message);
        assert!(decisions[0].1.message.contains("canary: 12 requests"), "{}", decisions[0].1.message);
        // The next interval starts from zero: 3 requests are too few.
        analyzer.record(&[report(Track::Canary, 3, 3, "r1")]);
        clock.advance(Duration::from_secs(1));
        assert_eq!(analyzer.tick()[0].1.verdict, Verdict::Held);
        analyzer.record(&[report(Track::Canary, 20, 4, "r1")]);
        clock.advance(Duration::from_secs(1));
        let decisions = analyzer.tick();
        assert_eq!(decisions[0].1.verdict, Verdict::RolledBack);
        let id = StageId { api: ObjectKey::new("shop", "shop"), stage: "prod".into() };
        assert_eq!(analyzer.status(&id).and_then(|s| s.effective_weight), Some(0.0));
        // A new canary revision starts over at the spec's weight.
        assert!(analyzer.sync(&snapshot("r2"), |_| None));
        assert_eq!(analyzer.status(&id).and_then(|s| s.effective_weight), Some(10.0));
        // No canary any more: forgotten.
        assert!(analyzer.sync(&Snapshot::default(), |_| None));
        assert!(analyzer.statuses().is_empty());
    }
}
