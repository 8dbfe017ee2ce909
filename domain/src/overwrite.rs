//! What happens when an upload's target already exists.
//!
//! JetStream's six overwrite modes, with their numbers. A backend declares in
//! its [`crate::Capabilities`] which modes it honours; [`decide`] turns the mode a
//! client asked for into the mode that applies, and says when the request
//! was ignored (on S3 every mode but in-place-always is ignored: objects are
//! replaced whole, so there is nothing to write "in part" and no rename).
//! [`OverwriteMode::plan`] then says what to do given what exists.

use std::fmt;
use std::str::FromStr;

/// An overwrite mode, numbered as in JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum OverwriteMode {
    /// 0: never overwrite an existing file; write in place.
    InPlaceNever = 0,
    /// 1: always overwrite, in place.
    InPlaceAlways = 1,
    /// 2: overwrite in place only if the existing file has the same size or is empty.
    InPlaceSameSize = 2,
    /// 3: write to a part file and rename it into place; refused if the target exists.
    PartFileNever = 3,
    /// 4: write to a part file, then replace the target.
    PartFileAlways = 4,
    /// 5: as 4, keeping the old file as `<name>.jetbak`.
    PartFileBackup = 5,
}

impl OverwriteMode {
    /// Every mode, by number.
    pub const ALL: [Self; 6] = [
        Self::InPlaceNever,
        Self::InPlaceAlways,
        Self::InPlaceSameSize,
        Self::PartFileNever,
        Self::PartFileAlways,
        Self::PartFileBackup,
    ];

    /// The JetStream number.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The kebab-case name (`in-place-always`).
    pub fn name(self) -> &'static str {
        match self {
            Self::InPlaceNever => "in-place-never",
            Self::InPlaceAlways => "in-place-always",
            Self::InPlaceSameSize => "in-place-same-size",
            Self::PartFileNever => "part-file-never",
            Self::PartFileAlways => "part-file-always",
            Self::PartFileBackup => "part-file-backup",
        }
    }

    /// Whether data goes to a part file first.
    pub fn uses_part_file(self) -> bool {
        matches!(
            self,
            Self::PartFileNever | Self::PartFileAlways | Self::PartFileBackup
        )
    }

    /// Whether [`Self::plan`] depends on the existing target, so that a
    /// writer must look it up first. In place always and part file always
    /// write the same way whatever exists: no lookup (a request saved per
    /// file on S3).
    pub fn needs_existing_size(self) -> bool {
        !matches!(self, Self::InPlaceAlways | Self::PartFileAlways)
    }

    /// What to do, given the size of the existing target (`None` if absent).
    pub fn plan(self, existing_size: Option<u64>, new_size: Option<u64>) -> WritePlan {
        let Some(existing) = existing_size else {
            return if self.uses_part_file() {
                WritePlan::ViaPartFile { backup: false }
            } else {
                WritePlan::InPlace
            };
        };
        match self {
            Self::InPlaceNever | Self::PartFileNever => WritePlan::Refuse(RefuseReason::Exists),
            Self::InPlaceAlways => WritePlan::InPlace,
            Self::InPlaceSameSize => {
                if existing == 0 || Some(existing) == new_size {
                    WritePlan::InPlace
                } else {
                    WritePlan::Refuse(RefuseReason::SizeDiffers { existing })
                }
            }
            Self::PartFileAlways => WritePlan::ViaPartFile { backup: false },
            Self::PartFileBackup => WritePlan::ViaPartFile { backup: true },
        }
    }
}

impl fmt::Display for OverwriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

impl TryFrom<u8> for OverwriteMode {
    type Error = String;
    fn try_from(n: u8) -> Result<Self, String> {
        Self::ALL
            .get(usize::from(n))
            .copied()
            .ok_or_else(|| format!("overwrite mode {n} does not exist; use 0 to 5"))
    }
}

impl FromStr for OverwriteMode {
    type Err = String;
    /// Accepts the number (`1`) or the name (`in-place-always`).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<u8>() {
            return Self::try_from(n);
        }
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "unknown overwrite mode {s:?}; use 0 to 5 or one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Why a write was refused by its overwrite mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The target exists and the mode never overwrites.
    Exists,
    /// Mode 2 and the existing file is non-empty with another size.
    SizeDiffers {
        /// The existing file's size.
        existing: u64,
    },
}

/// What an upload does about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePlan {
    /// Write the target directly.
    InPlace,
    /// Write `<name>.part`, then rename over the target (keeping `<name>.jetbak` if `backup`).
    ViaPartFile {
        /// Keep the old file as `<name>.jetbak`.
        backup: bool,
    },
    /// Do not write.
    Refuse(RefuseReason),
}

/// The suffix of part files.
pub const PART_FILE_SUFFIX: &str = ".part";
/// The suffix of backups made by mode 5.
pub const BACKUP_SUFFIX: &str = ".jetbak";

/// The effective mode of a write and whether the request was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverwriteDecision {
    /// What the client asked for, if anything.
    pub requested: Option<OverwriteMode>,
    /// What applies.
    pub effective: OverwriteMode,
    /// Whether a requested mode was replaced by the backend's.
    pub ignored: bool,
}

impl OverwriteDecision {
    /// The notice to show the user when the request was ignored.
    pub fn notice(&self) -> Option<String> {
        let requested = self.requested.filter(|_| self.ignored)?;
        Some(format!(
            "overwrite mode {requested} is not supported by this sandbox and was ignored; {} applies",
            self.effective
        ))
    }
}

/// Decides the effective overwrite mode for a backend that honours the
/// modes `honours` accepts and applies `default` otherwise
/// ([`crate::Capabilities::decide`] asks with a backend's declared ones).
///
/// A requested mode the backend honours applies; otherwise the backend's
/// default applies and `ignored` is set. No request means the default.
pub fn decide(
    requested: Option<OverwriteMode>,
    honours: impl Fn(OverwriteMode) -> bool,
    default: OverwriteMode,
) -> OverwriteDecision {
    match requested {
        Some(mode) if honours(mode) => OverwriteDecision {
            requested,
            effective: mode,
            ignored: false,
        },
        Some(_) => OverwriteDecision {
            requested,
            effective: default,
            ignored: true,
        },
        None => OverwriteDecision {
            requested,
            effective: default,
            ignored: false,
        },
    }
}

#[cfg(test)]
mod tests {
    fn caps_decide(requested: Option<OverwriteMode>, caps: &Capabilities) -> OverwriteDecision {
        caps.decide(requested)
    }

    use super::*;
    use crate::capability::Capabilities;

    #[test]
    fn numbers_and_names() {
        for (n, m) in OverwriteMode::ALL.iter().enumerate() {
            assert_eq!(usize::from(m.number()), n);
            assert_eq!(OverwriteMode::try_from(n as u8).unwrap(), *m);
            assert_eq!(m.name().parse::<OverwriteMode>().unwrap(), *m);
            assert_eq!(n.to_string().parse::<OverwriteMode>().unwrap(), *m);
        }
        assert!(OverwriteMode::try_from(6).unwrap_err().contains("0 to 5"));
        assert!("sometimes".parse::<OverwriteMode>().is_err());
    }

    #[test]
    fn s3_ignores_every_mode_but_in_place_always() {
        let caps = Capabilities::s3();
        for mode in OverwriteMode::ALL {
            let d = caps_decide(Some(mode), &caps);
            assert_eq!(d.effective, OverwriteMode::InPlaceAlways);
            assert_eq!(d.ignored, mode != OverwriteMode::InPlaceAlways, "{mode}");
            assert_eq!(d.notice().is_some(), d.ignored);
        }
        let d = caps_decide(None, &caps);
        assert_eq!(
            (d.effective, d.ignored),
            (OverwriteMode::InPlaceAlways, false)
        );
        assert!(d.notice().is_none());
        let notice = caps_decide(Some(OverwriteMode::PartFileBackup), &caps)
            .notice()
            .unwrap();
        assert!(
            notice.contains("part-file-backup (5)") && notice.contains("in-place-always (1)"),
            "{notice}"
        );
    }

    #[test]
    fn file_honours_all_six() {
        let caps = Capabilities::file();
        for mode in OverwriteMode::ALL {
            let d = caps_decide(Some(mode), &caps);
            assert_eq!((d.effective, d.ignored), (mode, false));
        }
    }

    #[test]
    fn a_plan_that_ignores_the_target_needs_no_lookup() {
        for mode in OverwriteMode::ALL {
            let differs = [None, Some(0), Some(3), Some(9)]
                .iter()
                .any(|e| mode.plan(*e, Some(3)) != mode.plan(None, Some(3)));
            assert_eq!(mode.needs_existing_size(), differs, "{mode}");
        }
    }

    #[test]
    fn plans() {
        use OverwriteMode::*;
        use WritePlan::*;
        assert_eq!(InPlaceNever.plan(None, Some(3)), InPlace);
        assert_eq!(
            InPlaceNever.plan(Some(3), Some(3)),
            Refuse(RefuseReason::Exists)
        );
        assert_eq!(InPlaceAlways.plan(Some(9), Some(3)), InPlace);
        assert_eq!(InPlaceSameSize.plan(Some(3), Some(3)), InPlace);
        assert_eq!(InPlaceSameSize.plan(Some(0), Some(3)), InPlace);
        assert_eq!(
            InPlaceSameSize.plan(Some(4), Some(3)),
            Refuse(RefuseReason::SizeDiffers { existing: 4 })
        );
        assert_eq!(
            InPlaceSameSize.plan(Some(4), None),
            Refuse(RefuseReason::SizeDiffers { existing: 4 })
        );
        assert_eq!(
            PartFileNever.plan(None, None),
            ViaPartFile { backup: false }
        );
        assert_eq!(
            PartFileNever.plan(Some(1), None),
            Refuse(RefuseReason::Exists)
        );
        assert_eq!(
            PartFileAlways.plan(Some(1), None),
            ViaPartFile { backup: false }
        );
        assert_eq!(
            PartFileBackup.plan(Some(1), None),
            ViaPartFile { backup: true }
        );
        assert_eq!(
            PartFileBackup.plan(None, None),
            ViaPartFile { backup: false }
        );
    }
}
