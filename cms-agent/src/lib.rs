//! The cms agent: discovers the instance's tags and facts, gets its catalog
//! (compiled locally from a roles repository in `apply`; pulled from the
//! server in later modes), and converges it with the providers of
//! `cms-modules`.

#![forbid(unsafe_code)]

pub mod aws;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod contents;
pub mod converge;
pub mod custom_facts;
pub mod daemon;
pub mod facts;
pub mod identity;
pub mod lifecycle;
pub mod lock;
pub mod node;
pub mod output;
pub mod remote;
pub mod report;
pub mod restarts;
pub mod schedule;
pub mod settings;
pub mod state;
pub mod tags;
pub mod textfile;
pub mod watch;
