//! `--shard I/N`: split the series of one source among N forecaster replicas with no
//! coordination (SPEC.md, "At fleet scale").
//!
//! A series belongs to shard `hashmod(key, N)`, computed exactly as Prometheus's `hashmod`
//! relabelling action does with the `by` labels as `source_labels` and the default `;`
//! separator: the MD5 of the label values joined by `;`, its last 8 bytes read as a
//! big-endian integer, modulo N. So a platform team can reproduce the split in a relabel
//! rule, and `tests/deploy/shard.rs` checks it against a real Prometheus.

use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count` (0 ≤ index < count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This replica's shard.
    pub index: u64,
    /// Number of shards (replicas).
    pub count: u64,
}

/// The shard of a series key among `count` shards, as Prometheus's `hashmod` computes it.
pub fn hashmod(key: &[String], count: u64) -> u64 {
    let digest = md5::compute(key.join(";").as_bytes());
    let mut low = [0u8; 8];
    low.copy_from_slice(&digest[8..16]);
    u64::from_be_bytes(low) % count.max(1)
}

impl Shard {
    /// Whether this shard forecasts the series with this key.
    pub fn owns(&self, key: &[String]) -> bool {
        self.count <= 1 || hashmod(key, self.count) == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why a `--shard` value was refused; each message quotes the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShardError {
    /// Not of the form `I/N`.
    #[error("{0:?} is not I/N (e.g. 0/3)")]
    Form(String),
    /// The index or the count is not a whole number.
    #[error("{text:?}: {what} {value:?} is not a whole number")]
    Number {
        /// The whole value.
        text: String,
        /// `index` or `count`.
        what: &'static str,
        /// The part that is not a number.
        value: String,
    },
    /// The count is 0 or above 10,000.
    #[error("{0:?}: the count must be between 1 and 10000")]
    Count(String),
    /// The index is not below the count.
    #[error("{text:?}: the index must be below the count (shards are numbered 0 to {last})")]
    Index {
        /// The whole value.
        text: String,
        /// The highest index allowed.
        last: u64,
    },
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| ShardError::Form(s.to_string()))?;
        let number = |v: &str, what: &'static str| {
            v.trim().parse::<u64>().map_err(|_| ShardError::Number {
                text: s.to_string(),
                what,
                value: v.to_string(),
            })
        };
        let (index, count) = (number(i, "index")?, number(n, "count")?);
        if count == 0 || count > 10_000 {
            return Err(ShardError::Count(s.to_string()));
        }
        if index >= count {
            return Err(ShardError::Index {
                text: s.to_string(),
                last: count - 1,
            });
        }
        Ok(Self { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_i_of_n_and_refuses_the_rest() {
        assert_eq!("1/3".parse(), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(
            "0/1".parse::<Shard>().map(|s| s.to_string()),
            Ok("0/1".into())
        );
        for bad in [
            "", "1", "3/3", "4/3", "0/0", "a/2", "1/b", "-1/2", "1/2/3", "0/10001",
        ] {
            let err = bad.parse::<Shard>().expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    /// Every key has exactly one owner, and the split is even enough to be useful.
    #[test]
    fn each_series_has_exactly_one_owner_and_the_split_is_even() {
        let count = 4;
        let shards: Vec<Shard> = (0..count).map(|index| Shard { index, count }).collect();
        let mut per_shard = vec![0usize; count as usize];
        for i in 0..4000 {
            let k = key(&["GET", &format!("/route/{i}")]);
            let owners: Vec<u64> = shards
                .iter()
                .filter(|s| s.owns(&k))
                .map(|s| s.index)
                .collect();
            assert_eq!(owners.len(), 1, "{k:?} owned by {owners:?}");
            per_shard[owners[0] as usize] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (850..=1150).contains(&n)),
            "{per_shard:?}"
        );
        let one = Shard { index: 0, count: 1 };
        assert!(one.owns(&key(&["anything"])));
    }

    /// The label values are joined with `;` before hashing (Prometheus's default separator),
    /// so moving a character across the boundary changes the hash input.
    #[test]
    fn the_key_is_joined_with_prometheus_default_separator() {
        let a = md5::compute(b"GET;/a");
        let mut low = [0u8; 8];
        low.copy_from_slice(&a[8..16]);
        assert_eq!(
            hashmod(&key(&["GET", "/a"]), 1 << 20),
            u64::from_be_bytes(low) % (1 << 20)
        );
        let differs = (0..50u64).any(|n| {
            let (x, y) = (key(&["ab", &n.to_string()]), key(&["a", &format!("b{n}")]));
            hashmod(&x, 1 << 30) != hashmod(&y, 1 << 30)
        });
        assert!(differs);
    }
}
