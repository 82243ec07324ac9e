//! The delta codec: binary deltas between firmware images, encoded by the publisher and decoded on the device in bounded memory.
#![deny(missing_docs)]
