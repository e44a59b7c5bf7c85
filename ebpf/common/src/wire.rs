//! Discriminants that cross the kernel/user boundary as plain `u32`s.
//!
//! Records and map values keep `u32` fields: an enum field read from kernel memory that
//! holds an unexpected value would be undefined behaviour in userspace. The kernel
//! writes `Enum::Variant as u32`; the agent decodes with `Enum::try_from(raw)`, which
//! fails with [`UnknownValue`] instead.

/// A `u32` read from a kernel record that is no value of the enum it is decoded into
/// (an object newer than the agent, or a corrupt record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    /// Name of the enum.
    pub what: &'static str,
    pub value: u32,
}

impl core::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "unknown {} {}", self.what, self.value)
    }
}

impl core::error::Error for UnknownValue {}

/// Declares a `#[repr(u32)]` enum with explicit values, its `ALL` list and a
/// `TryFrom<u32>` that fails with [`UnknownValue`].
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; [$($value),+].len()] = [$($name::$variant),+];
        }

        impl TryFrom<u32> for $name {
            type Error = $crate::UnknownValue;

            fn try_from(value: u32) -> Result<Self, Self::Error> {
                $(
                    if value == $name::$variant as u32 {
                        return Ok($name::$variant);
                    }
                )+
                Err($crate::UnknownValue {
                    what: stringify!($name),
                    value,
                })
            }
        }
    };
}
