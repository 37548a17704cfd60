//! What to ask a server: the request mix, the paths it targets, and how to build each request.

use std::fmt;
use std::str::FromStr;

use ferry_protocol::message::{FetchRequest, ListRequest, StatRequest, TO_END};
use ferry_protocol::Message;
use rand::Rng;

/// One kind of request in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    List,
    Stat,
    FetchSmall,
    FetchLarge,
    Echo,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::List, Op::Stat, Op::FetchSmall, Op::FetchLarge, Op::Echo];

    /// This operation's place in [`Op::ALL`].
    pub fn index(self) -> usize {
        match self {
            Op::List => 0,
            Op::Stat => 1,
            Op::FetchSmall => 2,
            Op::FetchLarge => 3,
            Op::Echo => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Stat => "stat",
            Op::FetchSmall => "fetch-small",
            Op::FetchLarge => "fetch-large",
            Op::Echo => "echo",
        }
    }
}

/// Weighted request mix, e.g. `list=1,stat=1,fetch-small=8,fetch-large=0,echo=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    /// Draws one operation according to the weights.
    pub fn pick(&self, rng: &mut impl Rng) -> Op {
        if let [(op, _)] = self.weights[..] {
            // A one-kind mix (the compare script's) needs no random draw.
            return op;
        }
        let mut n = rng.gen_range(0..self.total);
        for &(op, w) in &self.weights {
            if n < w {
                return op;
            }
            n -= w;
        }
        // The weights sum to `total`, so the loop always returns.
        self.weights[self.weights.len() - 1].0
    }

    pub fn weight(&self, op: Op) -> u32 {
        self.weights
            .iter()
            .find(|(o, _)| *o == op)
            .map_or(0, |(_, w)| *w)
    }
}

impl Default for Mix {
    fn default() -> Self {
        "list=1,stat=1,fetch-small=8,fetch-large=0,echo=1"
            .parse()
            .unwrap_or_else(|e| unreachable!("default mix parses: {e}"))
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?} is not NAME=WEIGHT"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| {
                    format!("unknown request kind {name:?}: use list, stat, fetch-small, fetch-large, echo")
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} must be a whole number, got {weight:?}"))?;
            if weights.iter().any(|(o, _)| *o == op) {
                return Err(format!("{name} appears twice in the mix"));
            }
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Err("the mix has no request kind with a weight above 0".into());
        }
        Ok(Self { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(op, w)| format!("{}={w}", op.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Paths on the server that each operation targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub list_dir: String,
    pub stat: String,
    pub small_file: String,
    pub large_file: String,
}

impl Targets {
    /// The request for `op`; `None` when the operation has no target (e.g. no file found).
    pub fn request(&self, op: Op) -> Option<Message> {
        Some(match op {
            Op::List => {
                Message::ListRequest(ListRequest::new(self.list_dir.clone(), false, 0).ok()?)
            }
            Op::Stat => Message::StatRequest(StatRequest::new(self.stat.clone()).ok()?),
            Op::FetchSmall if !self.small_file.is_empty() => {
                Message::FetchRequest(FetchRequest::new(self.small_file.clone(), 0, TO_END).ok()?)
            }
            Op::FetchLarge if !self.large_file.is_empty() => {
                Message::FetchRequest(FetchRequest::new(self.large_file.clone(), 0, TO_END).ok()?)
            }
            Op::FetchSmall | Op::FetchLarge => return None,
            Op::Echo => Message::Ping(bytes::Bytes::from_static(b"ferry-load")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_draws_by_weight() {
        let mix: Mix = "list=1,fetch-small=3,echo=0".parse().unwrap();
        assert_eq!(mix.to_string(), "list=1,fetch-small=3");
        let mut rng = rand::thread_rng();
        let smalls = (0..4000)
            .filter(|_| mix.pick(&mut rng) == Op::FetchSmall)
            .count();
        assert!((2700..3300).contains(&smalls), "{smalls}");
        assert!("list=x".parse::<Mix>().is_err());
        assert!("bogus=1".parse::<Mix>().is_err());
        assert!("list=0".parse::<Mix>().is_err());
        assert!("list=1,list=2".parse::<Mix>().is_err());
        let one: Mix = "echo=3".parse().unwrap();
        assert!((0..100).all(|_| one.pick(&mut rng) == Op::Echo));
    }

    #[test]
    fn index_is_the_place_in_all() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
    }
}
