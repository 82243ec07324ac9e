//! Release order on a (hardware id, channel): `add` refuses a version not above the newest already
//! published there unless told it is on purpose (`AddOptions::allow_lower`, a hotfix branch), since a
//! device never installs a version below the one it runs and a typo would otherwise publish a release
//! no device takes.

use std::collections::HashMap;

use ota_release::{Release, Version};

use crate::error::{Error, Result};
use crate::loader::RepoState;

/// The newest published release on each (hardware id, channel) `wanted` names, from every role:
/// (hardware, channel) → (version, target name). Only candidates' versions are parsed.
fn newest_published(
    state: &RepoState,
    wanted: &[(String, String)],
) -> HashMap<(String, String), (Version, String)> {
    let mut newest: HashMap<(String, String), (Version, String)> = HashMap::new();
    for (_, t) in state.all_roles() {
        for (name, target) in &t.targets {
            let Some(ota) = target.custom.get(ota_release::CUSTOM_KEY) else {
                continue;
            };
            let field = |k: &str| ota.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            if field("kind") != "release" {
                continue;
            }
            let channel = field("channel");
            let hardware = ota.get("hardware").and_then(|h| h.as_array());
            for h in hardware.into_iter().flatten().filter_map(|h| h.as_str()) {
                let Some(key) = wanted.iter().find(|(wh, wc)| wh == h && wc == channel) else {
                    continue;
                };
                let Ok(version) = ota_release::parse_version(field("version")) else {
                    continue;
                };
                if newest.get(key).is_none_or(|(v, _)| *v < version) {
                    newest.insert(key.clone(), (version, name.raw().to_owned()));
                }
            }
        }
    }
    newest
}

/// Refuses the first release of `releases` whose version is not above the newest one published on
/// one of its (hardware id, channel) pairs.
pub(crate) fn refuse_lower(state: &RepoState, releases: &[&Release]) -> Result<()> {
    let wanted: Vec<(String, String)> = releases
        .iter()
        .flat_map(|r| r.hardware.iter().map(|h| (h.to_string(), r.channel.to_string())))
        .collect();
    let newest = newest_published(state, &wanted);
    for r in releases {
        for h in &r.hardware {
            let key = (h.to_string(), r.channel.to_string());
            if let Some((v, existing)) = newest.get(&key).filter(|(v, _)| r.version <= *v) {
                return Err(Error::LowerVersion {
                    version: r.version.to_string(),
                    hardware: key.0,
                    channel: key.1,
                    newest: v.to_string(),
                    existing: existing.clone(),
                });
            }
        }
    }
    Ok(())
}
