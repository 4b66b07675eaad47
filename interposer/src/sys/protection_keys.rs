//! Memory protection keys (x86-64's PKU): a page tagged with a key the reading thread may
//! not access faults on a plain read, though `/proc/self/maps` calls it readable and the
//! kernel's reads (`process_vm_readv`, `/proc/self/mem`) ignore keys. A JIT that
//! write-protects its code this way (V8's) makes such pages. The exit scan copies memory
//! directly only outside the mappings with a key; this says which those are.
//!
//! Must never run on a hot path: it may read `/proc/self/smaps`, which walks every mapping's
//! page tables.

/// The mappings, as `(start, end)`, tagged with a protection key other than 0: empty when the
/// processor or the kernel has none; `None` when that cannot be told (no `/proc/self/smaps`,
/// or a processor whose memory tagging this does not know).
pub fn keyed_mappings() -> Option<Vec<(u64, u64)>> {
    if !keys_possible()? {
        return Some(Vec::new());
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut keyed = Vec::new();
    let mut mapping: Option<(u64, u64)> = None;
    let mut told = 0usize;
    let mut mappings = 0usize;
    for line in smaps.lines() {
        if let Some(parsed) = super::maps::MapsLine::parse(line.as_bytes()) {
            mapping = Some((parsed.start, parsed.end));
            mappings += 1;
        } else if let Some(key) = line.strip_prefix("ProtectionKey:") {
            told += 1;
            if key.trim() != "0" {
                keyed.extend(mapping);
            }
        }
    }
    // Every mapping says its key where the kernel uses them; without that, nothing is known.
    (told == mappings).then_some(keyed)
}

/// Whether the operating system enabled protection keys on this processor (CPUID's OSPKE
/// bit); `None` off x86-64, where this module knows no answer.
fn keys_possible() -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        const OSPKE: u32 = 1 << 4;
        if __cpuid(0).eax < 7 {
            return Some(false);
        }
        Some(__cpuid_count(7, 0).ecx & OSPKE != 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::keyed_mappings;

    #[test]
    fn a_process_that_made_no_key_has_no_keyed_mapping() {
        match keyed_mappings() {
            Some(keyed) => assert!(keyed.is_empty(), "{keyed:x?}"),
            None => eprintln!("skipped: protection keys cannot be told here"),
        }
    }
}
