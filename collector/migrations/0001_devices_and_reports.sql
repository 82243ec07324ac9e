-- Portable SQL: read by SQLite and PostgreSQL alike (see the crate doc). Times are Unix milliseconds.

-- Enrolled device keys. A revoked device keeps its row (revoked_at set) so its reports stay explained and
-- it cannot be enrolled again by accident.
CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY,
    key_algorithm TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    enrolled_at   BIGINT NOT NULL,
    revoked_at    BIGINT,
    last_sequence BIGINT,
    hardware      TEXT,
    channel       TEXT
);

-- Every accepted report: its fields, and the envelope exactly as received (UTF-8 JSON), so a signature
-- can be checked again later. The primary key makes a replay impossible even past the application's check.
CREATE TABLE reports (
    device_id        TEXT NOT NULL REFERENCES devices (device_id),
    sequence         BIGINT NOT NULL,
    received_at      BIGINT NOT NULL,
    hardware         TEXT NOT NULL,
    channel          TEXT NOT NULL,
    from_version     TEXT NOT NULL,
    to_version       TEXT NOT NULL,
    target           TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    reason           TEXT NOT NULL,
    started_at       BIGINT NOT NULL,
    finished_at      BIGINT NOT NULL,
    bytes_downloaded BIGINT NOT NULL,
    install_method   TEXT,
    wave             INTEGER,
    envelope         TEXT NOT NULL,
    PRIMARY KEY (device_id, sequence)
);

CREATE INDEX reports_by_release ON reports (hardware, channel, to_version);

-- Each device's latest report per release, kept up to date with every insert so that the summary reads
-- one row per device and release rather than every report ever received.
CREATE TABLE release_status (
    device_id  TEXT NOT NULL REFERENCES devices (device_id),
    hardware   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    to_version TEXT NOT NULL,
    wave       INTEGER,
    sequence   BIGINT NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, hardware, channel, to_version)
);

CREATE INDEX release_status_by_release ON release_status (hardware, channel, to_version);
