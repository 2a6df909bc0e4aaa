//! The summary `wgo report` prints: the trigger's reason, the ranked findings, then the
//! details: clocks and every anomaly by kind.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::analysis::Analysis;
use crate::analysis::anomalies::CauseKind;
use crate::analysis::anomalies::{Anomaly, Kind};
use crate::analysis::fmt::fmt_ns;

/// A short account for people: clocks, then what went wrong, most important first.
pub fn summary(a: &Analysis) -> String {
    let t = &a.trace;
    let mut s = String::new();
    for r in t.trigger_reasons() {
        let _ = writeln!(s, "Triggered: {r}");
    }
    match a.findings.len() {
        0 if a.anomalies.is_empty() && a.violations.is_empty() => {
            let _ = writeln!(s, "No findings: nothing went wrong that wgo can see.");
        }
        0 => {
            let _ = writeln!(s, "No findings: nothing stands out (the details list {} smaller anomalies).", a.anomalies.len());
        }
        n => {
            let _ = writeln!(s, "What went wrong ({n} finding{}, most important and earliest first):", if n == 1 { "" } else { "s" });
            for (k, f) in a.findings.iter().enumerate() {
                let _ = writeln!(s, "  {}. {}", k + 1, f.text);
            }
        }
    }
    let _ = writeln!(s, "Details:");
    let _ = writeln!(
        s,
        "{} nodes, {} events, {} messages matched, {} rule edges; clocks relative to {}:",
        t.nodes.len(),
        t.events.len(),
        a.matching.messages.len(),
        a.rule_edges,
        t.nodes[a.clocks.reference as usize].name
    );
    spec_usage(&mut s, a);
    for (i, n) in t.nodes.iter().enumerate() {
        let c = &a.clocks.nodes[i];
        let unc = c.uncertainty_ns.map_or("unknown".to_string(), |u| format!("± {}", fmt_ns(u)));
        let _ = writeln!(
            s,
            "  {:<12} offset {:>12} {:<14} {:?}, {} events",
            n.name,
            fmt_ns(c.offset_ns),
            unc,
            c.quality,
            t.node_ranges[i].len()
        );
        for sk in &n.skipped {
            let _ = writeln!(s, "    skipped: {sk}");
        }
    }
    // Evidence the clocks left out, and why: it is what a wrong match or a late trigger looks like.
    for p in &a.clocks.pairs {
        let (na, nb) = (&t.nodes[p.a as usize].name, &t.nodes[p.b as usize].name);
        if p.dropped_strong > 0 {
            let _ = writeln!(
                s,
                "  clocks {na}–{nb}: ignored {} message bound(s) that contradict the other {} (a wrong match, or a clock step)",
                p.dropped_strong,
                p.messages.saturating_sub(p.dropped_strong)
            );
        }
        if p.dropped_weak > 0 {
            let _ = writeln!(
                s,
                "  clocks {na}–{nb}: ignored the trigger receipts, which contradict the {} messages (a trigger heard late)",
                p.messages
            );
        }
    }
    let mut by_kind: BTreeMap<Kind, Vec<&Anomaly>> = BTreeMap::new();
    for x in &a.anomalies {
        by_kind.entry(x.kind).or_default().push(x);
    }
    if by_kind.is_empty() && a.violations.is_empty() {
        let _ = writeln!(s, "nothing went wrong that wgo can see");
    }
    // Losses per link, then everything else.
    if let Some(losses) = by_kind.get(&Kind::NetworkLoss) {
        // Per link and where they died: the network, or which kernel and why.
        let mut links: BTreeMap<(String, String, String), BTreeMap<String, usize>> = BTreeMap::new();
        for x in losses {
            let (from, to) = (t.nodes[x.nodes[0] as usize].name.clone(), t.nodes[x.nodes[1] as usize].name.clone());
            let what = x.events.first().map_or("message".into(), |&e| a.kind_name(e as usize));
            let reason = |r: Option<u16>| r.and_then(|r| t.drop_reasons.get(r as usize)).map_or("?", String::as_str).to_string();
            let cause = match x.cause {
                Some(c) if c.kind == CauseKind::SenderKernel => format!("dropped by {from}'s kernel ({})", reason(c.reason)),
                Some(c) if c.kind == CauseKind::ReceiverKernel => format!("dropped by {to}'s kernel ({})", reason(c.reason)),
                _ => "lost in the network".to_string(),
            };
            *links.entry((from, to, cause)).or_default().entry(what).or_default() += 1;
        }
        let _ = writeln!(s, "lost messages: {} never reached their receiver's application", losses.len());
        for ((from, to, cause), kinds) in links {
            let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = writeln!(s, "  {from} → {to}, {cause}: {}", list.join(", "));
        }
    }
    for (kind, list) in &by_kind {
        if *kind == Kind::NetworkLoss {
            continue;
        }
        let _ = writeln!(s, "{}: {}", kind.name().replace('_', " "), list.len());
        for x in list.iter().take(5) {
            let _ = writeln!(s, "  {}", a.anomaly_text(x));
        }
        if list.len() > 5 {
            let _ = writeln!(s, "  … and {} more", list.len() - 5);
        }
    }
    if !a.violations.is_empty() {
        let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for v in &a.violations {
            by_name.entry(&v.name).or_default().push(&v.text);
        }
        for (name, texts) in by_name {
            let _ = writeln!(s, "violated {name}: {}", texts.len());
            for t in texts.iter().take(3) {
                let _ = writeln!(s, "  {t}");
            }
        }
    }
    s
}

/// How many packets each message of the spec matched, and a warning for each message,
/// rule and invariant that matched nothing (a typo in a port or a match loads cleanly).
fn spec_usage(s: &mut String, a: &Analysis) {
    let (spec, u) = (&a.spec, &a.spec_usage);
    if spec.messages.is_empty() {
        return;
    }
    let counts: Vec<String> = spec.messages.iter().zip(&u.messages).map(|(m, n)| format!("{} {n}", m.name)).collect();
    let _ = writeln!(s, "  spec {}: packets per message: {}", spec.name, counts.join(", "));
    for (m, _) in spec.messages.iter().zip(&u.messages).filter(|(_, n)| **n == 0) {
        let _ = writeln!(s, "  warning: spec message {} matched no packet: check its port, transport and match", m.name);
    }
    for (r, _) in spec.rules.iter().zip(&u.rules).filter(|(_, n)| **n == 0) {
        let (e, b) = (&spec.messages[r.event.message].name, &spec.messages[r.after.message].name);
        let _ = writeln!(
            s,
            "  warning: spec rule {} (line {}) added no edge: {e} matched {} packet(s), {b} {}; check its ends, dir, where and key",
            r.name, r.line, u.messages[r.event.message], u.messages[r.after.message]
        );
    }
    for (i, _) in spec.invariants.iter().zip(&u.invariants).filter(|(_, n)| **n == 0) {
        let about = match i {
            crate::analysis::spec::InvariantDef::Answered { request, .. } => *request,
            crate::analysis::spec::InvariantDef::Monotonic { message, .. } => *message,
            crate::analysis::spec::InvariantDef::Never { sel, .. } => sel.message,
        };
        let _ = writeln!(
            s,
            "  warning: spec invariant {} checked nothing: {} matched no packet, so it holds vacuously",
            i.name(),
            spec.messages[about].name
        );
    }
}
