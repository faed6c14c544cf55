//! Keeping serde's error messages through postcard, which drops them.
//!
//! postcard's `Error::custom` forgets its message, so a user's own `Serialize` or
//! `Deserialize` error ("port must be below 65536") would reach the caller as "Serde
//! Serialization Error". [`Ser`] and [`De`] wrap postcard's serializer and deserializer with
//! an error type of ours, [`Kept`], that remembers the text. Every value the user's code sees
//! is wrapped again on the way down (elements, fields, variants, visitors), so whichever
//! level calls `custom`, it calls ours. Where our error has to pass back through postcard's
//! (one level up), the text goes to a thread-local slot ([`record`]) and postcard's error
//! carries on. [`super::encode`] and [`super::decode`] run plain postcard first (the
//! wrappers cost a few nanoseconds per element) and go through the wrappers only when
//! postcard reports a message it dropped (or, for decode, when the frame carries
//! descriptors), clearing the slot before and reading it after.
//!
//! Only forwarding lives here: the bytes on the wire are postcard's, unchanged.

use std::fmt;

use serde::de::{self, DeserializeSeed, Visitor};
use serde::ser::{self, Serialize};

use super::LAST_CUSTOM as LAST;

/// Forgets any message left from an earlier call (start of an encode or decode).
pub(super) fn clear() {
    LAST.with(|c| c.borrow_mut().take());
}

/// The message recorded since [`clear`], if any.
pub(super) fn take() -> Option<String> {
    LAST.with(|c| c.borrow_mut().take())
}

/// Keeps `msg` as the reason of the failure under way (the latest one wins: a failure that
/// an outer `Deserialize` recovered from is replaced by the one that counts).
pub(super) fn record(msg: String) {
    LAST.with(|c| *c.borrow_mut() = Some(msg));
}

/// The error of our wrappers: postcard's own, or a message someone gave `custom`.
#[derive(Debug)]
pub(super) enum Kept<E> {
    Inner(E),
    Custom(String),
}

impl<E: fmt::Display> fmt::Display for Kept<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kept::Inner(e) => e.fmt(f),
            Kept::Custom(m) => f.write_str(m),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Kept<E> {}

impl<E: ser::Error> ser::Error for Kept<E> {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Kept::Custom(msg.to_string())
    }
}

impl<E: de::Error> de::Error for Kept<E> {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Kept::Custom(msg.to_string())
    }
}

/// Back into serializer error `E`, keeping a custom message in the thread-local slot.
fn lower_ser<E: ser::Error>(e: Kept<E>) -> E {
    match e {
        Kept::Inner(e) => e,
        Kept::Custom(m) => {
            let e = E::custom(&m);
            record(m);
            e
        }
    }
}

/// Back into deserializer error `E`, keeping a custom message in the thread-local slot.
fn lower_de<E: de::Error>(e: Kept<E>) -> E {
    match e {
        Kept::Inner(e) => e,
        Kept::Custom(m) => {
            let e = E::custom(&m);
            record(m);
            e
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Serializing
// ---------------------------------------------------------------------------------------------

/// A value to serialize through [`Ser`]: `Keep(&v).serialize(postcard)` runs `v`'s
/// `Serialize` against our wrapper.
pub(super) struct Keep<'a, T: ?Sized>(pub(super) &'a T);

impl<T: Serialize + ?Sized> Serialize for Keep<'_, T> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Ser(s)).map_err(lower_ser)
    }
}

/// A serializer that forwards to `S` with [`Kept`] as its error.
pub(super) struct Ser<S>(S);

/// A compound serializer (sequence, tuple, map, struct, ...) that wraps each element.
pub(super) struct Compound<C>(C);

macro_rules! forward_ser {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method(self, v: $ty) -> Result<S::Ok, Self::Error> {
                self.0.$method(v).map_err(Kept::Inner)
            }
        )*
    };
}

impl<S: ser::Serializer> ser::Serializer for Ser<S> {
    type Ok = S::Ok;
    type Error = Kept<S::Error>;
    type SerializeSeq = Compound<S::SerializeSeq>;
    type SerializeTuple = Compound<S::SerializeTuple>;
    type SerializeTupleStruct = Compound<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<S::SerializeTupleVariant>;
    type SerializeMap = Compound<S::SerializeMap>;
    type SerializeStruct = Compound<S::SerializeStruct>;
    type SerializeStructVariant = Compound<S::SerializeStructVariant>;

    forward_ser! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_unit_struct(&'static str);
    }

    fn serialize_none(self) -> Result<S::Ok, Self::Error> {
        self.0.serialize_none().map_err(Kept::Inner)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<S::Ok, Self::Error> {
        self.0.serialize_some(&Keep(v)).map_err(Kept::Inner)
    }
    fn serialize_unit(self) -> Result<S::Ok, Self::Error> {
        self.0.serialize_unit().map_err(Kept::Inner)
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, Self::Error> {
        self.0
            .serialize_unit_variant(name, index, variant)
            .map_err(Kept::Inner)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<S::Ok, Self::Error> {
        self.0
            .serialize_newtype_struct(name, &Keep(v))
            .map_err(Kept::Inner)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<S::Ok, Self::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Keep(v))
            .map_err(Kept::Inner)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        self.0.serialize_seq(len).map(Compound).map_err(Kept::Inner)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Self::Error> {
        self.0
            .serialize_tuple(len)
            .map(Compound)
            .map_err(Kept::Inner)
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        self.0
            .serialize_tuple_struct(name, len)
            .map(Compound)
            .map_err(Kept::Inner)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(Compound)
            .map_err(Kept::Inner)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        self.0.serialize_map(len).map(Compound).map_err(Kept::Inner)
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        self.0
            .serialize_struct(name, len)
            .map(Compound)
            .map_err(Kept::Inner)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(Compound)
            .map_err(Kept::Inner)
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, v: &T) -> Result<S::Ok, Self::Error> {
        self.0.collect_str(v).map_err(Kept::Inner)
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! compound {
    ($trait:ident, $method:ident $(, $key:ident: $kty:ty)?) => {
        impl<C: ser::$trait> ser::$trait for Compound<C> {
            type Ok = C::Ok;
            type Error = Kept<C::Error>;
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $($key: $kty,)?
                v: &T,
            ) -> Result<(), Self::Error> {
                self.0.$method($($key,)? &Keep(v)).map_err(Kept::Inner)
            }
            fn end(self) -> Result<C::Ok, Self::Error> {
                self.0.end().map_err(Kept::Inner)
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);

/// The two struct-like compounds (named fields, one of them skippable).
macro_rules! struct_compound {
    ($trait:ident) => {
        impl<C: ser::$trait> ser::$trait for Compound<C> {
            type Ok = C::Ok;
            type Error = Kept<C::Error>;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), Self::Error> {
                self.0.serialize_field(key, &Keep(v)).map_err(Kept::Inner)
            }
            fn skip_field(&mut self, key: &'static str) -> Result<(), Self::Error> {
                self.0.skip_field(key).map_err(Kept::Inner)
            }
            fn end(self) -> Result<C::Ok, Self::Error> {
                self.0.end().map_err(Kept::Inner)
            }
        }
    };
}

struct_compound!(SerializeStruct);
struct_compound!(SerializeStructVariant);

impl<C: ser::SerializeMap> ser::SerializeMap for Compound<C> {
    type Ok = C::Ok;
    type Error = Kept<C::Error>;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Self::Error> {
        self.0.serialize_key(&Keep(k)).map_err(Kept::Inner)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Self::Error> {
        self.0.serialize_value(&Keep(v)).map_err(Kept::Inner)
    }
    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        k: &K,
        v: &V,
    ) -> Result<(), Self::Error> {
        self.0
            .serialize_entry(&Keep(k), &Keep(v))
            .map_err(Kept::Inner)
    }
    fn end(self) -> Result<C::Ok, Self::Error> {
        self.0.end().map_err(Kept::Inner)
    }
}

// ---------------------------------------------------------------------------------------------
// Deserializing
// ---------------------------------------------------------------------------------------------

/// A seed that deserializes its value through [`De`]; at the top, `Seed(PhantomData::<T>)`.
pub(super) struct Seed<S>(pub(super) S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(De(d)).map_err(lower_de)
    }
}

/// A deserializer that forwards to `D` with [`Kept`] as its error.
pub(super) struct De<D>(D);

/// A visitor, or an access (sequence, map, enum, variant), whose callee sees our wrappers.
pub(super) struct Wrap<V>(V);

macro_rules! forward_de {
    ($($method:ident $(($($arg:ident: $ty:ty),*))?;)*) => {
        $(
            fn $method<V: Visitor<'de>>(
                self,
                $($($arg: $ty,)*)?
                visitor: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.$method($($($arg,)*)? Wrap(visitor)).map_err(Kept::Inner)
            }
        )*
    };
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for De<D> {
    type Error = Kept<D::Error>;

    forward_de! {
        deserialize_any;
        deserialize_bool;
        deserialize_i8;
        deserialize_i16;
        deserialize_i32;
        deserialize_i64;
        deserialize_i128;
        deserialize_u8;
        deserialize_u16;
        deserialize_u32;
        deserialize_u64;
        deserialize_u128;
        deserialize_f32;
        deserialize_f64;
        deserialize_char;
        deserialize_str;
        deserialize_string;
        deserialize_bytes;
        deserialize_byte_buf;
        deserialize_option;
        deserialize_unit;
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq;
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map;
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier;
        deserialize_ignored_any;
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.0.$method::<Kept<E>>(v).map_err(lower_de)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none::<Kept<E>>().map_err(lower_de)
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit::<Kept<E>>().map_err(lower_de)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(De(d)).map_err(lower_de)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(De(d)).map_err(lower_de)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(Wrap(a)).map_err(lower_de)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Wrap(a)).map_err(lower_de)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(Wrap(a)).map_err(lower_de)
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Wrap<A> {
    type Error = Kept<A::Error>;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0.next_element_seed(Seed(seed)).map_err(Kept::Inner)
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Wrap<A> {
    type Error = Kept<A::Error>;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.0.next_key_seed(Seed(seed)).map_err(Kept::Inner)
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.0.next_value_seed(Seed(seed)).map_err(Kept::Inner)
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Wrap<A> {
    type Error = Kept<A::Error>;
    type Variant = Wrap<A::Variant>;
    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), Self::Error> {
        self.0
            .variant_seed(Seed(seed))
            .map(|(v, access)| (v, Wrap(access)))
            .map_err(Kept::Inner)
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Wrap<A> {
    type Error = Kept<A::Error>;
    fn unit_variant(self) -> Result<(), Self::Error> {
        self.0.unit_variant().map_err(Kept::Inner)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.0.newtype_variant_seed(Seed(seed)).map_err(Kept::Inner)
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .tuple_variant(len, Wrap(visitor))
            .map_err(Kept::Inner)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .struct_variant(fields, Wrap(visitor))
            .map_err(Kept::Inner)
    }
}
