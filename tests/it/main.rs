
mod evaluate;
mod inspect;
