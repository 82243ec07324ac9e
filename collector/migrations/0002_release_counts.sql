-- Devices per release and outcome, kept by each report's transaction (the device's old outcome on the
-- release counted down, the new one up), so the summary reads one row per release and outcome instead of
-- one per device. Filled from release_status for databases that already hold reports.
CREATE TABLE release_counts (
    hardware   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    to_version TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    devices    BIGINT NOT NULL,
    PRIMARY KEY (hardware, channel, to_version, outcome)
);

INSERT INTO release_counts (hardware, channel, to_version, outcome, devices)
SELECT hardware, channel, to_version, outcome, COUNT(*) FROM release_status
GROUP BY hardware, channel, to_version, outcome;

-- The failure reasons are read for failing outcomes only: an index that starts there and covers the query.
CREATE INDEX release_status_failures ON release_status (outcome, hardware, channel, to_version, reason);

-- Devices per hardware and channel (the summary's "pending"): read from this index alone, not the rows.
CREATE INDEX devices_by_line ON devices (hardware, channel, revoked_at);
