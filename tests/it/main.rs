
mod inspect;
