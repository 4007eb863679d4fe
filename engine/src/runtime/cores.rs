//! Choosing the cores the workers run on: a pure function, tested without
//! threads.
//!
//! `--cores N` takes the first N available CPUs; `--cpu-set 0,2,4` takes
//! exactly those (each must be available); neither takes every available
//! CPU. "Available" is what `core_affinity` reports for this process, which
//! honours the process's affinity mask (taskset, cgroups).

/// Which CPUs run workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CoreSelection {
    /// One worker per available CPU.
    #[default]
    All,
    /// The first N available CPUs.
    Count(usize),
    /// Exactly these CPUs.
    Set(Vec<usize>),
}

impl CoreSelection {
    /// Builds a selection from the `cores` and `cpu_set` settings, which
    /// may not both be given.
    pub fn from_parts(
        cores: Option<usize>,
        cpu_set: Option<Vec<usize>>,
    ) -> Result<CoreSelection, String> {
        match (cores, cpu_set) {
            (Some(_), Some(_)) => Err("cores and cpu_set: give one or the other, not both".into()),
            (Some(0), None) => Err("cores: must be at least 1".into()),
            (Some(n), None) => Ok(CoreSelection::Count(n)),
            (None, Some(set)) => parse_set_list(set).map(CoreSelection::Set),
            (None, None) => Ok(CoreSelection::All),
        }
    }

    /// The CPUs to pin workers to, given the available ones (sorted).
    pub fn plan(&self, available: &[usize]) -> Result<Vec<usize>, String> {
        if available.is_empty() {
            return Err("no CPU is available to this process".into());
        }
        match self {
            CoreSelection::All => Ok(available.to_vec()),
            CoreSelection::Count(n) if *n > available.len() => Err(format!(
                "cores: {n} requested but only {} CPUs are available ({})",
                available.len(),
                list(available)
            )),
            CoreSelection::Count(n) => Ok(available[..*n].to_vec()),
            CoreSelection::Set(set) => {
                if let Some(cpu) = set.iter().find(|c| !available.contains(c)) {
                    return Err(format!(
                        "cpu-set: CPU {cpu} is not available (available: {})",
                        list(available)
                    ));
                }
                Ok(set.clone())
            }
        }
    }
}

fn parse_set_list(set: Vec<usize>) -> Result<Vec<usize>, String> {
    if set.is_empty() {
        return Err("cpu_set: the list is empty".into());
    }
    let mut seen = set.clone();
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err("cpu_set: a CPU is listed twice".into());
    }
    Ok(set)
}

/// A CPU list given on the command line, e.g. `0,2,4` or `0-3,8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl std::str::FromStr for CpuList {
    type Err = String;
    fn from_str(text: &str) -> Result<CpuList, String> {
        parse_cpu_list(text).map(CpuList)
    }
}

/// The highest CPU number a list may name (Linux's own limit is 8,191):
/// a range up to it is still a small list, one past `usize` is not.
const CPU_MAX: usize = 8191;

/// Parses a CPU list such as `0,2,4` or `0-3,8`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let bad = || format!("invalid CPU list {text:?} (expected e.g. 0,2,4 or 0-3)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                if b > CPU_MAX {
                    return Err(format!(
                        "invalid CPU list {text:?} (CPU {b} is above {CPU_MAX})"
                    ));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    parse_set_list(cpus).map_err(|e| e.replace("cpu_set", "cpu-set"))
}

/// The CPUs this process may run on, sorted.
pub fn available() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_selection() {
        let avail = [0, 1, 2, 3];
        assert_eq!(CoreSelection::All.plan(&avail), Ok(vec![0, 1, 2, 3]));
        assert_eq!(CoreSelection::Count(2).plan(&avail), Ok(vec![0, 1]));
        assert_eq!(CoreSelection::Set(vec![3, 1]).plan(&avail), Ok(vec![3, 1]));
        assert!(CoreSelection::Count(5).plan(&avail).is_err());
        assert!(CoreSelection::Set(vec![7]).plan(&avail).is_err());
        assert!(CoreSelection::All.plan(&[]).is_err());
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0,2,4"), Ok(vec![0, 2, 4]));
        assert_eq!(parse_cpu_list("0-3,8"), Ok(vec![0, 1, 2, 3, 8]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("1,1").is_err());
        let e = parse_cpu_list("0-18446744073709551615").expect_err("too many");
        assert!(e.contains("above 8191"), "{e}");
    }

    #[test]
    fn parts_conflict() {
        assert!(CoreSelection::from_parts(Some(1), Some(vec![0])).is_err());
        assert!(CoreSelection::from_parts(Some(0), None).is_err());
        assert_eq!(
            CoreSelection::from_parts(None, None),
            Ok(CoreSelection::All)
        );
    }
}
