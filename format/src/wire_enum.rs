//! `wire_enum!`: declares an enum that travels as one byte in a trace, writing each variant's
//! byte and its report name once, on the same line, so that the encoder's `as u8`, the
//! decoder's `from_u8` and the reporter's `name` cannot disagree.
//!
//! The bytes are part of the format (`SPEC.md`): a variant's byte must never change or be
//! reused, and `from_u8` must never panic on a byte it does not know (it returns `None`, which
//! the decoder reports as corruption). The names are part of the report (text and JSON,
//! `docs/report-schema.md`) and must not change either.

/// `wire_enum! { /// doc  #[derive(…)] pub enum Name { Variant = byte => "name", … } }`
/// declares the enum `#[repr(u8)]`, with:
/// - `ALL`: every variant, in declaration order;
/// - `from_u8(byte) -> Option<Self>`;
/// - `name(self) -> &'static str`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $byte:literal => $text:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                $variant = $byte,
            )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($byte),+].len()] = [$($name::$variant),+];

            /// The variant written as `value`, or `None` for a byte no variant uses.
            pub fn from_u8(value: u8) -> Option<$name> {
                match value {
                    $($byte => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The name used in reports and the JSON schema.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
    };
}

pub(crate) use wire_enum;
