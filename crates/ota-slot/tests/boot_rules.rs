//! The boot-control rules every backend shares (`BootState`), checked over random operation sequences.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ota_slot::{BootState, SlotId};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    PowerOn,
    StartTrial(SlotId, u8),
    MarkGood(SlotId),
    MarkBad(SlotId),
}

fn slot() -> impl Strategy<Value = SlotId> {
    prop_oneof![Just(SlotId::A), Just(SlotId::B)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::PowerOn),
        1 => (slot(), 0u8..5).prop_map(|(s, t)| Op::StartTrial(s, t)),
        1 => slot().prop_map(Op::MarkGood),
        1 => slot().prop_map(Op::MarkBad),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rules_hold_for_any_sequence(primary in slot(), ops in proptest::collection::vec(op(), 1..40)) {
        let mut state = BootState::new(primary);
        for op in ops {
            let before = state;
            match op {
                Op::PowerOn => {
                    let booted = state.power_on();
                    // Never boot a bad slot while the other one is good.
                    prop_assert!(!state.is_bad(booted) || state.is_bad(booted.other()), "{before:?} booted {booted}");
                    match before.trial() {
                        // A trial with tries left on a good slot boots it and uses one try.
                        Some(t) if t.tries_left > 0 && !before.is_bad(t.slot) => {
                            prop_assert_eq!(booted, t.slot);
                            prop_assert_eq!(state.bootcount, before.bootcount + 1);
                        }
                        // Otherwise the trial ends and the trial slot only boots as a fallback.
                        _ => {
                            prop_assert_eq!(state.trial(), None);
                            prop_assert_eq!(state.primary, before.primary);
                        }
                    }
                }
                Op::StartTrial(slot, tries) => {
                    let result = state.start_trial(slot, tries, 3);
                    if (1..=3).contains(&tries) {
                        prop_assert!(result.is_ok());
                        let t = state.trial().unwrap();
                        prop_assert_eq!((t.slot, t.tries_left), (slot, tries));
                        prop_assert!(!state.is_bad(slot));
                    } else {
                        prop_assert!(result.is_err());
                        prop_assert_eq!(state, before, "a refused request changes nothing");
                    }
                }
                Op::MarkGood(slot) => {
                    state.mark_good(slot);
                    prop_assert_eq!(state.primary, slot);
                    prop_assert_eq!(state.trial(), None);
                    prop_assert!(!state.is_bad(slot));
                }
                Op::MarkBad(slot) => {
                    state.mark_bad(slot);
                    prop_assert!(state.is_bad(slot));
                    prop_assert!(state.trial().is_none_or(|t| t.slot != slot));
                    prop_assert_eq!(state.primary, before.primary);
                }
            }
            // Whatever happened, the variables round-trip through the U-Boot/GRUB text form.
            let vars = state.to_vars();
            let back = BootState::from_vars("test", |k| {
                vars.iter().find(|(name, _)| *name == k).and_then(|(_, v)| v.as_deref())
            })
            .unwrap();
            prop_assert_eq!(back, state);
        }
    }

    /// A trial of n tries boots the trial slot exactly n times, then the primary, unless committed.
    #[test]
    fn trial_boots_exactly_its_tries(primary in slot(), tries in 1u8..=9) {
        let mut state = BootState::new(primary);
        let target = primary.other();
        state.start_trial(target, tries, 9).unwrap();
        for _ in 0..tries {
            prop_assert_eq!(state.power_on(), target);
        }
        prop_assert_eq!(state.power_on(), primary);
        prop_assert_eq!(state.trial(), None);
        prop_assert_eq!(state.power_on(), primary);
    }
}
