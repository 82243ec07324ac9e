-- Each device's queue drop count (cumulative, as its latest report carries it) and each report's.
ALTER TABLE reports ADD COLUMN reports_dropped BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN reports_dropped BIGINT NOT NULL DEFAULT 0;

-- Every halt and alert the collector's rules issued: at most one of each per release (hardware,
-- channel, version), so a release is never halted twice. `reports` lists the reports the rule judged,
-- as a JSON array of {"device_id": ..., "sequence": ...}.
CREATE TABLE rollout_actions (
    hardware    TEXT NOT NULL,
    channel     TEXT NOT NULL,
    to_version  TEXT NOT NULL,
    action      TEXT NOT NULL,
    rule        TEXT NOT NULL,
    at          BIGINT NOT NULL,
    wave        INTEGER,
    judged      BIGINT NOT NULL,
    rolled_back BIGINT NOT NULL,
    reports     TEXT NOT NULL,
    detail      TEXT NOT NULL,
    PRIMARY KEY (hardware, channel, to_version, action)
);
