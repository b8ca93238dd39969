//! Model-based property test: under any sequence of generate, verify, delete and time
//! steps, the store accepts a code exactly when a simple model says it is live, so no
//! code is ever accepted more often than issued or after it expires.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

use sparekey::store::CodeRequest;
use sparekey::{
    Context, Decision, DeviceKind, DigestKey, ManualClock, NewUser, Policy, Reason, Store,
};

#[derive(Clone, Debug)]
enum Op {
    Generate {
        count: usize,
        reuse: u32,
        valid: u64,
        preserve: bool,
    },
    /// Verify the n-th code ever issued (modulo how many), or a code never issued.
    Verify {
        pick: usize,
        fresh: bool,
    },
    Delete {
        pick: usize,
    },
    Advance {
        secs: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1..4usize, 0..4u32, 0..6u64, any::<bool>())
            .prop_map(|(count, reuse, valid, preserve)| Op::Generate { count, reuse, valid, preserve }),
        4 => (any::<usize>(), prop::bool::weighted(0.1)).prop_map(|(pick, fresh)| Op::Verify { pick, fresh }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => (0..4i64).prop_map(|secs| Op::Advance { secs }),
    ]
}

/// What the model knows of a code: uses left (`None` unlimited), expiry, how often issued.
#[derive(Debug)]
struct Live {
    id: String,
    uses: Option<u32>,
    expires: Option<i64>,
    issued: u32,
    accepted: u32,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_code_is_accepted_more_than_issued_or_after_expiry(ops in prop::collection::vec(op(), 1..60)) {
        let clock = ManualClock::at(1_000_000);
        let policy = Policy { lockout_threshold: 0, ..Policy::default() };
        let mut store = Store::in_memory(DigestKey::from_bytes([3; 32]), policy, Arc::new(clock.clone())).unwrap();
        let ctx = Context::new("prop");
        store.add_user(NewUser { username: "u".into(), ..NewUser::default() }, &ctx).unwrap();
        store.add_device("u", DeviceKind::Phone, None, &ctx).unwrap();

        let mut history: Vec<String> = Vec::new();
        let mut live: HashMap<String, Live> = HashMap::new();
        for op in ops {
            match op {
                Op::Generate { count, reuse, valid, preserve } => {
                    let req = CodeRequest { count, reuse_count: reuse, valid_secs: valid, preserve_existing: preserve, ..CodeRequest::default() };
                    let issued = store.generate_codes("u", req, &ctx).unwrap();
                    if !preserve {
                        live.clear();
                    }
                    let now = clock_now(&clock);
                    for c in issued.codes {
                        let value = c.code.expose().to_owned();
                        history.push(value.clone());
                        live.insert(value, Live {
                            id: c.info.id.to_string(),
                            uses: (reuse > 0).then_some(reuse),
                            expires: (valid > 0).then(|| now + valid as i64),
                            issued: reuse,
                            accepted: 0,
                        });
                    }
                }
                Op::Verify { pick, fresh } => {
                    let code = if fresh || history.is_empty() { "000000000".to_owned() } else { history[pick % history.len()].clone() };
                    let now = clock_now(&clock);
                    let v = store.verify("u", &code, &ctx).unwrap();
                    let expected_live = live.get(&code).is_some_and(|l| l.expires.is_none_or(|e| now < e));
                    if expected_live {
                        prop_assert_eq!(v.decision, Decision::Accept);
                        let l = live.get_mut(&code).unwrap();
                        l.accepted += 1;
                        prop_assert!(l.issued == 0 || l.accepted <= l.issued);
                        prop_assert_eq!(v.code_id.as_ref().map(|c| c.to_string()), Some(l.id.clone()));
                        match l.uses {
                            Some(1) => { live.remove(&code); }
                            Some(n) => l.uses = Some(n - 1),
                            None => {}
                        }
                    } else {
                        prop_assert!(matches!(v.decision, Decision::Reject(Reason::WrongCode | Reason::Expired)), "{:?}", v.decision);
                        live.remove(&code);
                    }
                }
                Op::Delete { pick } => {
                    if !history.is_empty() {
                        let code = &history[pick % history.len()];
                        if let Some(l) = live.remove(code) {
                            // The store drops expired codes as it meets them; those may be gone already.
                            let expired = l.expires.is_some_and(|e| clock_now(&clock) >= e);
                            match store.delete_code(&l.id, &ctx) {
                                Ok(_) => {}
                                Err(e) if e.is_not_found() && expired => {}
                                Err(e) => prop_assert!(false, "delete of a live code failed: {}", e),
                            }
                        }
                    }
                }
                Op::Advance { secs } => clock.advance(secs),
            }
        }
    }
}

fn clock_now(c: &ManualClock) -> i64 {
    sparekey::Clock::now(c)
}
