//! (being written: the run loop, integrated once the sensor and pipeline land)
