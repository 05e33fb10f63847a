//! The songgen CLAP + VST3 plugin (built out in its own issue).
